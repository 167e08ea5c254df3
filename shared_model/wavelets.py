"""Low-pass (LL) bands of the 2D discrete wavelet transform, for SFP.

The transform comes from ptwt (maintained, matches PyWavelets). The older
pytorch_wavelets package is supported as an optional backend giving the same
numbers (and the only one with ``periodization``); it imports
``pkg_resources``, so it needs setuptools below 81
(``pip install 'fer-split[pytorch-wavelets]'``; ``scripts/test.sh`` tests it in
a venv of its own).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import pywt
import torch
from torch import Tensor

# Boundary modes each backend implements (PyWavelets' names). ``zero`` is the
# default: pytorch_wavelets' default too, so all three libraries agree on every
# coefficient out of the box. ptwt has no ``periodization``.
BACKEND_MODES: dict[str, tuple[str, ...]] = {
    "ptwt": ("zero", "symmetric", "reflect"),
    "pytorch_wavelets": ("zero", "symmetric", "reflect", "periodization"),
}
BOUNDARY_MODE = "zero"
BACKENDS = tuple(BACKEND_MODES)


@lru_cache(maxsize=None)
def _wavelet(name: str) -> pywt.Wavelet:
    try:
        return pywt.Wavelet(name)
    except ValueError as error:
        raise ValueError(f"unknown wavelet {name!r}: {error}") from None


def _ptwt_lowpass(x: Tensor, wavelet: str, mode: str) -> Tensor:
    import ptwt

    return ptwt.wavedec2(x, _wavelet(wavelet), level=1, mode=mode)[0]


def _pytorch_wavelets() -> Any:
    try:
        import pytorch_wavelets
    except ImportError as error:
        raise ImportError(
            "the pytorch_wavelets backend needs `pip install 'fer-split[pytorch-wavelets]'` "
            f"(pytorch_wavelets with setuptools<81): {error}"
        ) from error
    return pytorch_wavelets


def _check_periodization(length: int, wavelet: str, mode: str) -> None:
    # pytorch_wavelets wraps a band around once; PyWavelets wraps as often as the filter needs.
    if mode == "periodization" and length + length % 2 < _wavelet(wavelet).dec_len:
        raise ValueError(f"pytorch_wavelets' periodization differs from PyWavelets' on a {length}-sample band shorter than the {wavelet} filter")


def _pytorch_wavelets_lowpass(x: Tensor, wavelet: str, mode: str) -> Tensor:
    _check_periodization(min(x.shape[-2:]), wavelet, mode)
    transform = _pytorch_wavelets().DWTForward(J=1, wave=wavelet, mode=mode).to(device=x.device, dtype=x.dtype)
    return transform(x)[0]


_LOWPASS: dict[str, Callable[[Tensor, str, str], Tensor]] = {
    "ptwt": _ptwt_lowpass,
    "pytorch_wavelets": _pytorch_wavelets_lowpass,
}


def check_backend(backend: str, mode: str = BOUNDARY_MODE) -> None:
    """Refuse an unknown backend, or a boundary mode the backend does not implement."""
    if backend not in BACKEND_MODES:
        raise ValueError(f"unknown wavelet backend {backend!r}; expected one of {BACKENDS}")
    if mode not in BACKEND_MODES[backend]:
        raise ValueError(f"the {backend} backend has no boundary mode {mode!r}; it has {BACKEND_MODES[backend]}")


def lowpass(x: Tensor, wavelet: str, backend: str = "ptwt", mode: str = BOUNDARY_MODE) -> Tensor:
    """One DWT level: the LL band of a (N, C, H, W) tensor."""
    check_backend(backend, mode)
    return _LOWPASS[backend](x, wavelet, mode)


def lowpass_cascade(x: Tensor, wavelet: str, max_level: int, backend: str = "ptwt", mode: str = BOUNDARY_MODE) -> list[Tensor]:
    """LL bands at levels 1..max_level; each level transforms the previous LL band.

    This is how a multi-level DWT is defined, so ``result[k - 1]`` equals the LL
    band of a level-k ``wavedec2``.
    """
    bands = []
    for _ in range(max_level):
        x = lowpass(x, wavelet, backend, mode)
        bands.append(x)
    return bands


def _ptwt_lowpass_1d(x: Tensor, wavelet: str, mode: str) -> Tensor:
    import ptwt

    return ptwt.wavedec(x, _wavelet(wavelet), mode=mode, level=1)[0]


def _pytorch_wavelets_lowpass_1d(x: Tensor, wavelet: str, mode: str) -> Tensor:
    _check_periodization(x.shape[-1], wavelet, mode)
    transform = _pytorch_wavelets().DWT1DForward(J=1, wave=wavelet, mode=mode).to(device=x.device, dtype=x.dtype)
    return transform(x[:, None, :])[0][:, 0, :]


_LOWPASS_1D: dict[str, Callable[[Tensor, str, str], Tensor]] = {
    "ptwt": _ptwt_lowpass_1d,
    "pytorch_wavelets": _pytorch_wavelets_lowpass_1d,
}


def lowpass_sum_weights_1d(wavelet: str, level: int, length: int, backend: str = "ptwt", mode: str = BOUNDARY_MODE) -> tuple[Tensor, int]:
    """Sample weights ``a`` (length,) with ``sum(L_level(x)) == x @ a``, and the band's length."""
    check_backend(backend, mode)
    band = torch.eye(length, dtype=torch.float64)
    for step in range(level):
        try:
            band = _LOWPASS_1D[backend](band, wavelet, mode)
        except RuntimeError as error:  # torch's reflect padding cannot reach past the band
            raise ValueError(f"{backend} cannot transform a {band.shape[-1]}-sample band with {wavelet} in {mode} mode (level {step + 1}): {error}") from None
    return band.sum(dim=-1), int(band.shape[-1])


def lowpass_mean_weights(
    wavelet: str, level: int, height: int, width: int, backend: str = "ptwt", mode: str = BOUNDARY_MODE
) -> Tensor:
    """Pixel weights ``w`` (H*W, float64) with ``mean(LL_level(x)) == x.flatten() @ w``.

    SFP only needs the global average of each LL band. The transform is linear
    and separable (rows, then columns, each level), so that average is a fixed
    pixel weighting, the outer product of two 1D weightings found by
    transforming the sample basis with the chosen DWT library. Pooling then
    costs one multiply-add per pixel instead of a DWT per request; the SFP
    module keeps the weights for its configured map size as a buffer.
    """
    with torch.no_grad():
        rows, band_height = lowpass_sum_weights_1d(wavelet, level, height, backend, mode)
        cols, band_width = lowpass_sum_weights_1d(wavelet, level, width, backend, mode)
        return torch.outer(rows, cols).flatten() / (band_height * band_width)


def supported_wavelets() -> list[str]:
    """Every wavelet name the config accepts and PyWavelets knows: haar, dbN, symN."""
    return ["haar", *pywt.wavelist("db"), *pywt.wavelist("sym")]


def departure_from_uniform(weights: Tensor) -> float:
    """``max |w / mean(w) - 1|``: 0 when the LL-band mean is a constant times the plain average."""
    return float((weights / weights.mean() - 1).abs().max())


def mass_moved(weights: Tensor) -> float:
    """Total-variation distance of the normalized weights from uniform: the share of pooling mass a plain average would place elsewhere."""
    normalized = weights / weights.sum()
    return float(0.5 * (normalized - 1 / weights.numel()).abs().sum())


def boundary_table(height: int = 28, width: int = 28, modes: tuple[str, ...] = BACKEND_MODES["pytorch_wavelets"]) -> list[dict[str, object]]:
    """Departure from uniform pooling of every supported wavelet, level 1..4 and boundary mode.

    Each mode is derived with the first backend that implements it (ptwt, then
    pytorch_wavelets); modes no installed backend has are left out.
    """
    import warnings

    rows: list[dict[str, object]] = []
    for mode in modes:
        backend = next(b for b in BACKENDS if mode in BACKEND_MODES[b])
        for wavelet in supported_wavelets():
            for level in range(1, 5):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # level above PyWavelets' advice for long filters
                    try:
                        weights = lowpass_mean_weights(wavelet, level, height, width, backend, mode)
                    except ImportError:
                        break
                    except ValueError:  # the mode cannot extend a band this short by this filter
                        continue
                rows.append({"mode": mode, "backend": backend, "wavelet": wavelet, "level": level, "departure": departure_from_uniform(weights), "mass_moved": mass_moved(weights)})
    return rows


def _print_boundary_summary() -> None:
    """``python -m shared_model.wavelets``: per mode and level, the departure over all wavelets."""
    rows = boundary_table()
    print("mode           level  wavelets  uniform (<1e-9)  max departure  median departure  median mass moved  max mass moved")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for level in range(1, 5):
            group = [r for r in rows if r["mode"] == mode and r["level"] == level]
            dep = sorted(float(r["departure"]) for r in group)
            moved = sorted(float(r["mass_moved"]) for r in group)
            uniform = sum(v < 1e-9 for v in dep)
            print(f"{mode:<14} {level:>5}  {len(dep):>8}  {uniform:>15}  {dep[-1]:>13.3g}  {dep[len(dep) // 2]:>16.3g}  {moved[len(moved) // 2]:>17.3g}  {moved[-1]:>14.3g}")
    for wavelet in ("haar", "db2", "sym3"):
        print(wavelet + " (departure / mass moved): " + "; ".join(f"{r['mode']} L{r['level']} {float(r['departure']):.3g} / {float(r['mass_moved']):.3g}" for r in rows if r["wavelet"] == wavelet))


__all__ = [
    "BACKENDS",
    "BACKEND_MODES",
    "BOUNDARY_MODE",
    "check_backend",
    "lowpass",
    "lowpass_cascade",
    "lowpass_mean_weights",
    "supported_wavelets",
    "departure_from_uniform",
    "mass_moved",
    "boundary_table",
]

if __name__ == "__main__":
    _print_boundary_summary()
