"""Tensor codec for the wire: float32, float16, and per-tensor affine uint8.

Quantization is ``q = clamp(round(x / scale) + zero_point, 0, 255)`` and
``x ~ (q - zero_point) * scale``; the range is taken from the tensor itself, so
the round-trip error is at most one quantization step (``scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

FP32 = "fp32"
FP16 = "fp16"
UINT8 = "uint8"
ENCODINGS = (FP32, FP16, UINT8)

_NUMPY_DTYPES = {FP32: np.dtype("<f4"), FP16: np.dtype("<f2"), UINT8: np.dtype("u1")}
# Names used by the Open Inference Protocol for the same element types.
PROTOCOL_DATATYPES = {FP32: "FP32", FP16: "FP16", UINT8: "UINT8"}
ENCODING_OF_DATATYPE = {v: k for k, v in PROTOCOL_DATATYPES.items()}


class CodecError(ValueError):
    """Bytes or a tensor that cannot be encoded or decoded; the message says why."""


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor as bytes plus what is needed to decode it."""

    data: bytes
    shape: tuple[int, ...]
    encoding: str
    scale: float | None = None
    zero_point: int | None = None

    @property
    def nbytes(self) -> int:
        return len(self.data)


def element_size(encoding: str) -> int:
    _check_encoding(encoding)
    return _NUMPY_DTYPES[encoding].itemsize


def expected_nbytes(shape: Sequence[int], encoding: str) -> int:
    return math.prod(shape) * element_size(encoding)


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise CodecError(f"shape must be non-negative integers, got {shape}")
    return tuple(int(d) for d in shape)


def quantization_params(x: Tensor) -> tuple[float, int]:
    """Per-tensor (scale, zero_point) covering the tensor's range, zero included."""
    low = min(float(x.min()), 0.0) if x.numel() else 0.0
    high = max(float(x.max()), 0.0) if x.numel() else 0.0
    scale = (high - low) / 255.0
    if scale == 0.0 or not math.isfinite(scale):
        scale = 1.0
    zero_point = int(min(255, max(0, round(-low / scale))))
    return scale, zero_point


def quantize(x: Tensor, scale: float, zero_point: int) -> Tensor:
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255).to(torch.uint8)


def dequantize(q: Tensor, scale: float, zero_point: int) -> Tensor:
    return (q.to(torch.float32) - zero_point) * scale


def encode(x: Tensor, encoding: str = UINT8) -> EncodedTensor:
    """Encode a float tensor; refuses NaN and infinite values."""
    _check_encoding(encoding)
    if not torch.is_floating_point(x):
        raise CodecError(f"only floating-point tensors are encoded, got {x.dtype}")
    x = x.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(x).all():
        raise CodecError("tensor holds NaN or infinite values")
    shape = tuple(x.shape)
    if encoding == UINT8:
        scale, zero_point = quantization_params(x)
        data = quantize(x, scale, zero_point).numpy().tobytes()
        return EncodedTensor(data, shape, encoding, scale, zero_point)
    array = x.numpy().astype(_NUMPY_DTYPES[encoding])
    if encoding == FP16 and not np.isfinite(array).all():
        raise CodecError("tensor exceeds the float16 range (max 65504)")
    return EncodedTensor(array.tobytes(), shape, encoding)


def decode(encoded: EncodedTensor) -> Tensor:
    """Decode to a float32 tensor, validating shape, byte count and parameters."""
    return decode_bytes(encoded.data, encoded.shape, encoded.encoding, encoded.scale, encoded.zero_point)


def decode_bytes(
    data: bytes,
    shape: Sequence[int],
    encoding: str,
    scale: float | None = None,
    zero_point: int | None = None,
) -> Tensor:
    """Bytes -> float32 tensor of ``shape``; every inconsistency is a :class:`CodecError`."""
    _check_encoding(encoding)
    shape = _check_shape(shape)
    expected = expected_nbytes(shape, encoding)
    if len(data) != expected:
        raise CodecError(
            f"{encoding} tensor of shape {list(shape)} needs {expected} bytes, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=_NUMPY_DTYPES[encoding]).reshape(shape)
    if encoding == UINT8:
        _check_quantization(scale, zero_point)
        return dequantize(torch.from_numpy(array.copy()), float(scale), int(zero_point))  # type: ignore[arg-type]
    tensor = torch.from_numpy(array.astype(np.float32))
    if not torch.isfinite(tensor).all():
        raise CodecError("tensor holds NaN or infinite values")
    return tensor


def _check_quantization(scale: float | None, zero_point: int | None) -> None:
    if scale is None or zero_point is None:
        raise CodecError("uint8 tensors need both 'scale' and 'zero_point'")
    if not math.isfinite(scale) or scale <= 0:
        raise CodecError(f"'scale' must be a finite positive number, got {scale}")
    if int(zero_point) != zero_point or not 0 <= zero_point <= 255:
        raise CodecError(f"'zero_point' must be an integer in 0..255, got {zero_point}")
