"""Low-pass (LL) bands of the 2D discrete wavelet transform, for SFP.

The transform comes from ptwt (maintained, matches PyWavelets). The older
pytorch_wavelets package is supported as an optional backend giving the same
numbers; it imports ``pkg_resources``, so it needs setuptools below 81
(``pip install 'fer-split[pytorch-wavelets]'``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import pywt
import torch
from torch import Tensor

# Zero padding at the borders: the convention of pytorch_wavelets' default and a
# PyWavelets mode, so all three libraries agree on every coefficient.
BOUNDARY_MODE = "zero"
BACKENDS = ("ptwt", "pytorch_wavelets")


@lru_cache(maxsize=None)
def _wavelet(name: str) -> pywt.Wavelet:
    try:
        return pywt.Wavelet(name)
    except ValueError as error:
        raise ValueError(f"unknown wavelet {name!r}: {error}") from None


def _ptwt_lowpass(x: Tensor, wavelet: str) -> Tensor:
    import ptwt

    return ptwt.wavedec2(x, _wavelet(wavelet), level=1, mode=BOUNDARY_MODE)[0]


@lru_cache(maxsize=None)
def _pytorch_wavelets_transform(wavelet: str) -> torch.nn.Module:
    try:
        from pytorch_wavelets import DWTForward
    except ImportError as error:
        raise ImportError(
            "the pytorch_wavelets backend needs `pip install 'fer-split[pytorch-wavelets]'` "
            f"(pytorch_wavelets with setuptools<81): {error}"
        ) from error
    return DWTForward(J=1, wave=wavelet, mode=BOUNDARY_MODE)


def _pytorch_wavelets_lowpass(x: Tensor, wavelet: str) -> Tensor:
    transform = _pytorch_wavelets_transform(wavelet).to(device=x.device, dtype=x.dtype)
    return transform(x)[0]


_LOWPASS: dict[str, Callable[[Tensor, str], Tensor]] = {
    "ptwt": _ptwt_lowpass,
    "pytorch_wavelets": _pytorch_wavelets_lowpass,
}


def check_backend(backend: str) -> None:
    if backend not in _LOWPASS:
        raise ValueError(f"unknown wavelet backend {backend!r}; expected one of {BACKENDS}")


def lowpass(x: Tensor, wavelet: str, backend: str = "ptwt") -> Tensor:
    """One DWT level: the LL band of a (N, C, H, W) tensor."""
    check_backend(backend)
    return _LOWPASS[backend](x, wavelet)


def lowpass_cascade(x: Tensor, wavelet: str, max_level: int, backend: str = "ptwt") -> list[Tensor]:
    """LL bands at levels 1..max_level; each level transforms the previous LL band.

    This is how a multi-level DWT is defined, so ``result[k - 1]`` equals the LL
    band of a level-k ``wavedec2``.
    """
    bands = []
    for _ in range(max_level):
        x = lowpass(x, wavelet, backend)
        bands.append(x)
    return bands


@lru_cache(maxsize=128)
def lowpass_mean_weights(wavelet: str, level: int, height: int, width: int, backend: str = "ptwt") -> Tensor:
    """Pixel weights ``w`` (H*W, float64) with ``mean(LL_level(x)) == x.flatten() @ w``.

    SFP only needs the global average of each LL band. The transform is linear,
    so that average is a fixed weighting of the input pixels, found once per map
    size by transforming the pixel basis with the chosen DWT library. Pooling
    then costs one multiply-add per pixel instead of a DWT per request.
    """
    with torch.inference_mode(False), torch.no_grad():  # cached: must stay usable outside inference mode
        basis = torch.eye(height * width, dtype=torch.float64).view(height * width, 1, height, width)
        band = lowpass_cascade(basis, wavelet, level, backend)[-1]
        return band.mean(dim=(1, 2, 3)).clone()
