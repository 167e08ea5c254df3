"""The wire contract: Open Inference Protocol (KServe v2) messages and the names both sides use.

The generated modules (``inference_pb2``, ``inference_pb2_grpc``) come from
``protos/inference.proto``; see :mod:`shared_model.protocol.generate`.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Mapping

from . import inference_pb2 as pb
from . import inference_pb2_grpc as pb_grpc

SERVICE_NAME = "inference.GRPCInferenceService"
ATTENTION_MODEL = "fer_attention"
CLASSIFIER_MODEL = "fer_classifier"
FEATURES = "features"
IMAGE = "image"
PROBABILITIES = "probabilities"

SCALE = "scale"
ZERO_POINT = "zero_point"
# Server timings carried as response parameters, in microseconds.
QUEUE_US = "queue_us"
COMPUTE_US = "compute_us"
BATCH_SIZE = "batch_size"


def parameter(value: Any) -> pb.InferParameter:
    """A Python bool, int, float or str as an InferParameter."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise TypeError(f"unsupported parameter type {type(value).__name__}")


def parameter_value(param: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (None when unset)."""
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` field from a dict."""
    for key, value in values.items():
        target[key].CopyFrom(parameter(value))


def read_parameters(source: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in source.items()}


def pack_bytes_elements(elements: Iterable[bytes]) -> bytes:
    """BYTES tensor raw layout: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def unpack_bytes_elements(raw: bytes) -> list[bytes]:
    """Inverse of :func:`pack_bytes_elements`; raises ValueError on a truncated buffer."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("BYTES tensor is truncated inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError(f"BYTES element declares {length} bytes but only {len(raw) - offset} remain")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


__all__ = [
    "pb",
    "pb_grpc",
    "parameter",
    "parameter_value",
    "set_parameters",
    "read_parameters",
    "pack_bytes_elements",
    "unpack_bytes_elements",
]
