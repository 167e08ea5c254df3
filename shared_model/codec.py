"""Tensor codec for the wire: float32, float16, and per-tensor affine uint8.

Quantization is ``q = clamp(round(x / scale) + zero_point, 0, 255)`` and
``x ~ (q - zero_point) * scale``; the range is taken from the tensor itself, so
the round-trip error is at most one quantization step (``scale``).

NumPy only: the torch-free edge uses it too. ``encode`` also takes torch
tensors; ``decode`` returns float32 NumPy arrays (``torch.from_numpy`` shares them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "FP32", "FP16", "UINT8", "ENCODINGS", "PROTOCOL_DATATYPES", "ENCODING_OF_DATATYPE", "CodecError",
    "EncodedTensor", "element_size", "expected_nbytes", "quantization_params", "quantize", "dequantize",
    "as_float32_array", "encode", "decode", "decode_bytes",
]

FP32 = "fp32"
FP16 = "fp16"
UINT8 = "uint8"
ENCODINGS = (FP32, FP16, UINT8)

_NUMPY_DTYPES = {FP32: np.dtype("<f4"), FP16: np.dtype("<f2"), UINT8: np.dtype("u1")}
# Names used by the Open Inference Protocol for the same element types (shared_model.protocol.DATATYPE_*).
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


def quantization_params(x: np.ndarray) -> tuple[float, int]:
    """Per-tensor (scale, zero_point) covering the tensor's range, zero included."""
    low = min(float(x.min()), 0.0) if x.size else 0.0
    high = max(float(x.max()), 0.0) if x.size else 0.0
    scale = (high - low) / 255.0
    if scale == 0.0 or not math.isfinite(scale):
        scale = 1.0
    zero_point = int(min(255, max(0, round(-low / scale))))
    return scale, zero_point


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / np.float32(scale)) + zero_point, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def as_float32_array(x: object) -> np.ndarray:
    """A float32 C-contiguous NumPy copy of a NumPy array or torch tensor."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        if not x.is_floating_point():  # type: ignore[attr-defined]
            raise CodecError(f"only floating-point tensors are encoded, got {x.dtype}")  # type: ignore[attr-defined]
        x = x.detach().to("cpu").float().numpy()  # type: ignore[attr-defined]
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.floating):
        raise CodecError(f"only floating-point tensors are encoded, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def encode(x: object, encoding: str = UINT8) -> EncodedTensor:
    """Encode a float tensor or array; refuses NaN and infinite values."""
    _check_encoding(encoding)
    array = as_float32_array(x)
    if not np.isfinite(array).all():
        raise CodecError("tensor holds NaN or infinite values")
    shape = tuple(array.shape)
    if encoding == UINT8:
        scale, zero_point = quantization_params(array)
        return EncodedTensor(quantize(array, scale, zero_point).tobytes(), shape, encoding, scale, zero_point)
    with np.errstate(over="ignore"):
        converted = array.astype(_NUMPY_DTYPES[encoding])
    if encoding == FP16 and not np.isfinite(converted).all():
        raise CodecError("tensor exceeds the float16 range (max 65504)")
    return EncodedTensor(converted.tobytes(), shape, encoding)


def decode(encoded: EncodedTensor) -> np.ndarray:
    """Decode to a float32 array, validating shape, byte count and parameters."""
    return decode_bytes(encoded.data, encoded.shape, encoded.encoding, encoded.scale, encoded.zero_point)


def decode_bytes(
    data: bytes,
    shape: Sequence[int],
    encoding: str,
    scale: float | None = None,
    zero_point: int | None = None,
) -> np.ndarray:
    """Bytes -> float32 array of ``shape``; every inconsistency is a :class:`CodecError`."""
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
        return dequantize(array, float(scale), int(zero_point))  # type: ignore[arg-type]
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise CodecError("tensor holds NaN or infinite values")
    return values


def _check_quantization(scale: float | None, zero_point: int | None) -> None:
    if scale is None or zero_point is None:
        raise CodecError("uint8 tensors need both 'scale' and 'zero_point'")
    if not math.isfinite(scale) or scale <= 0:
        raise CodecError(f"'scale' must be a finite positive number, got {scale}")
    if int(zero_point) != zero_point or not 0 <= zero_point <= 255:
        raise CodecError(f"'zero_point' must be an integer in 0..255, got {zero_point}")
