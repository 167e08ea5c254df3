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

from typing import Sequence

import torch
from torch import Tensor, nn

from .config import MAX_SFP_LEVEL, ModelConfig
from .wavelets import BOUNDARY_MODE, check_backend, lowpass_mean_weights

DEFAULT_MAP_SIZE: tuple[int, int] = ModelConfig().split_shape[1:]


def chunk_sizes(channels: int, groups: int) -> list[int]:
    """Group sizes as ``torch.chunk`` makes them; refuses splits it cannot make."""
    sizes = [len(c) for c in torch.arange(channels).chunk(groups)]
    if len(sizes) != groups:
        raise ValueError(f"torch.chunk cannot split {channels} channels into {groups} groups (it makes {len(sizes)})")
    return sizes


class FrequencyGroupPool(nn.Module):
    """(N, C, H, W) -> (N, C): each channel group pooled from the LL band at its level.

    ``mean(LL(x))`` is linear in ``x``, so each channel's pooled value is a fixed
    pixel weighting derived from the DWT library
    (:func:`wavelets.lowpass_mean_weights`); the forward pass is one weighted sum.
    The weights for ``map_size`` are a non-persistent buffer (they follow the
    module's device and dtype and stay out of the state dict); other map sizes
    are derived on the fly.

    Args:
        channels: channels of the input map.
        levels: DWT level of each channel group (groups as ``torch.chunk`` makes them).
        wavelet: PyWavelets name (``haar``, ``dbN``, ``symN``).
        backend: DWT library the weights are derived with: ``ptwt`` or ``pytorch_wavelets``.
        mode: the DWT's boundary mode (``zero``, ``symmetric``, ``reflect``;
            ``periodization`` with pytorch_wavelets).
        map_size: (H, W) the weights are precomputed for; the split map is 28x28.
    """

    def __init__(
        self,
        channels: int,
        levels: Sequence[int],
        wavelet: str = "db2",
        backend: str = "ptwt",
        mode: str = BOUNDARY_MODE,
        map_size: tuple[int, int] = DEFAULT_MAP_SIZE,
    ) -> None:
        super().__init__()
        if not levels or any(not 1 <= level <= MAX_SFP_LEVEL for level in levels):
            raise ValueError(f"levels must be in 1..{MAX_SFP_LEVEL}, got {tuple(levels)}")
        check_backend(backend, mode)
        self.levels = tuple(levels)
        self.sizes = chunk_sizes(channels, len(self.levels))
        self.wavelet = wavelet
        self.backend = backend
        self.mode = mode
        self.map_size = (int(map_size[0]), int(map_size[1]))
        weights = self._derive_weights(*self.map_size).to(torch.get_default_dtype())
        self.register_buffer("weights", weights, persistent=False)

    def _derive_weights(self, height: int, width: int) -> Tensor:
        rows = [
            lowpass_mean_weights(self.wavelet, level, height, width, self.backend, self.mode).expand(size, -1)
            for level, size in zip(self.levels, self.sizes)
        ]
        return torch.cat(rows)

    def channel_weights(self, height: int, width: int) -> Tensor:
        """(C, H*W) pooling weights: row c is the LL-mean weighting at channel c's group level."""
        if (height, width) == self.map_size:
            return self.weights
        return self._derive_weights(height, width).to(self.weights)

    def forward(self, x: Tensor) -> Tensor:
        # int(): under tracing (ONNX/TorchScript export) sizes are tensors; the weights are constants.
        weights = self.channel_weights(int(x.shape[-2]), int(x.shape[-1])).to(x.dtype)
        return (x.flatten(2) * weights).sum(dim=-1)

    def extra_repr(self) -> str:
        return f"groups={self.sizes}, levels={self.levels}, wavelet={self.wavelet}, mode={self.mode}, backend={self.backend}"


class ScalableFrequencyPooling(nn.Module):
    """SFP channel attention: wavelet group pooling, one C x C FC, sigmoid, scale.

    Arguments as for :class:`FrequencyGroupPool`.
    """

    def __init__(
        self,
        channels: int,
        levels: Sequence[int] = (1, 2, 3),
        wavelet: str = "db2",
        backend: str = "ptwt",
        mode: str = BOUNDARY_MODE,
        map_size: tuple[int, int] = DEFAULT_MAP_SIZE,
    ) -> None:
        super().__init__()
        self.pool = FrequencyGroupPool(channels, levels, wavelet, backend, mode, map_size)
        self.fc = nn.Linear(channels, channels)

    def attention(self, x: Tensor) -> Tensor:
        """Channel weights in (0, 1), shape (N, C)."""
        return torch.sigmoid(self.fc(self.pool(x)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)[:, :, None, None]


__all__ = ["ScalableFrequencyPooling", "FrequencyGroupPool", "chunk_sizes"]
