"""SFP: Scalable Frequency Pooling (channel attention).

Wu et al., "Edge-AI-Driven Framework with Efficient Mobile Network Design for
Facial Expression Recognition", ACM TECS 22(3), 2023, Section 3.3.

The C channels are split into n groups exactly as ``torch.chunk`` splits them
(C=8, n=3 gives 3, 3, 2). Group i is reduced to the LL band of a level-l_i 2D
DWT and global-average-pooled; the n results are concatenated back into C
values, passed through one C x C fully connected layer and a sigmoid, and the
result scales the channels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import MAX_SFP_LEVEL
from .wavelets import check_backend, lowpass_mean_weights


def chunk_sizes(channels: int, groups: int) -> list[int]:
    """Group sizes as ``torch.chunk`` makes them; refuses splits it cannot make."""
    sizes = [len(c) for c in torch.arange(channels).chunk(groups)]
    if len(sizes) != groups:
        raise ValueError(f"torch.chunk cannot split {channels} channels into {groups} groups (it makes {len(sizes)})")
    return sizes


class FrequencyGroupPool(nn.Module):
    """(N, C, H, W) -> (N, C): each channel group pooled from the LL band at its level.

    ``mean(LL(x))`` is linear in ``x``, so each channel's pooled value is a fixed
    pixel weighting derived once per map size from the DWT library
    (:func:`wavelets.lowpass_mean_weights`); the forward pass is one weighted sum.
    """

    def __init__(self, channels: int, levels: Sequence[int], wavelet: str = "db2", backend: str = "ptwt") -> None:
        super().__init__()
        if not levels or any(not 1 <= level <= MAX_SFP_LEVEL for level in levels):
            raise ValueError(f"levels must be in 1..{MAX_SFP_LEVEL}, got {tuple(levels)}")
        check_backend(backend)
        self.levels = tuple(levels)
        self.sizes = chunk_sizes(channels, len(self.levels))
        self.wavelet = wavelet
        self.backend = backend

    def channel_weights(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(C, H*W) pooling weights: row c is the LL-mean weighting at channel c's group level."""
        return _channel_weights(self.wavelet, self.levels, tuple(self.sizes), height, width, self.backend, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        # int(): under tracing (ONNX/TorchScript export) sizes are tensors; the weights are constants.
        weights = self.channel_weights(int(x.shape[-2]), int(x.shape[-1]), x.device, x.dtype)
        return (x.flatten(2) * weights).sum(dim=-1)

    def extra_repr(self) -> str:
        return f"groups={self.sizes}, levels={self.levels}, wavelet={self.wavelet}, backend={self.backend}"


@lru_cache(maxsize=64)
def _channel_weights(
    wavelet: str,
    levels: tuple[int, ...],
    sizes: tuple[int, ...],
    height: int,
    width: int,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    with torch.inference_mode(False):  # cached: must stay usable outside inference mode
        rows = [lowpass_mean_weights(wavelet, level, height, width, backend).expand(size, -1) for level, size in zip(levels, sizes)]
        return torch.cat(rows).to(device=device, dtype=dtype)


class ScalableFrequencyPooling(nn.Module):
    """SFP channel attention: wavelet group pooling, one C x C FC, sigmoid, scale."""

    def __init__(
        self, channels: int, levels: Sequence[int] = (1, 2, 3), wavelet: str = "db2", backend: str = "ptwt"
    ) -> None:
        super().__init__()
        self.pool = FrequencyGroupPool(channels, levels, wavelet, backend)
        self.fc = nn.Linear(channels, channels)

    def attention(self, x: Tensor) -> Tensor:
        """Channel weights in (0, 1), shape (N, C)."""
        return torch.sigmoid(self.fc(self.pool(x)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)[:, :, None, None]


SFP = ScalableFrequencyPooling
