"""The wire contract: Open Inference Protocol (KServe v2) messages and the names both sides use.

The generated modules (``inference_pb2``, ``inference_pb2_grpc``) come from
``protos/inference.proto``; see :mod:`shared_model.protocol.generate`.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Iterable, Mapping

from . import inference_pb2 as pb
from . import inference_pb2_grpc as pb_grpc

SERVICE_NAME = "inference.GRPCInferenceService"
ATTENTION_MODEL = "fer_attention"  # split: the attention stage
REST_MODEL = "fer_rest"  # split-rest: attention and tail, from the split tensor to probabilities
CLASSIFIER_MODEL = "fer_classifier"  # cloud: the whole network from a face image
FEATURES = "features"
SPATIAL_ATTENTION = "spatial_attention"  # UINT8 [N, 1, H, W], fixed scale ATTENTION_SCALE
CHANNEL_ATTENTION = "channel_attention"  # UINT8 [N, C], fixed scale ATTENTION_SCALE
IMAGE = "image"
PROBABILITIES = "probabilities"
# Attention values lie in (0, 1): quantized with a fixed scale and zero point 0.
ATTENTION_SCALE = 1.0 / 255.0
# What each model can answer, and what it answers when a request names no outputs.
MODEL_OUTPUTS = {
    ATTENTION_MODEL: (FEATURES, SPATIAL_ATTENTION, CHANNEL_ATTENTION),
    REST_MODEL: (PROBABILITIES,),
    CLASSIFIER_MODEL: (PROBABILITIES,),
}
DEFAULT_OUTPUTS = {ATTENTION_MODEL: (FEATURES,), REST_MODEL: (PROBABILITIES,), CLASSIFIER_MODEL: (PROBABILITIES,)}

SCALE = "scale"
ZERO_POINT = "zero_point"
# Server timings carried as response parameters, in microseconds.
QUEUE_US = "queue_us"
COMPUTE_US = "compute_us"
SERVER_US = "server_us"  # from the request's arrival to its answer
BATCH_SIZE = "batch_size"
# ModelMetadata parameters (in Triton: parameters of the model configuration).
FINGERPRINT = "fingerprint"
CLASS_NAMES = "class_names"
CONFIG = "config"

# The protocol's names of the element types used here; shared_model.codec maps
# its encodings (fp32, fp16, uint8) to the same names (a test checks they agree).
DATATYPE_FP32 = "FP32"
DATATYPE_FP16 = "FP16"
DATATYPE_UINT8 = "UINT8"
DATATYPE_BYTES = "BYTES"  # each element: 4-byte little-endian length, then its bytes

# Bearer-token auth: gRPC metadata (an HTTP/2 header) on every call but health checks.
AUTHORIZATION = "authorization"
BEARER = "Bearer"

# ModelStreamInfer's in-band error: a request that fails on a stream gets a
# response whose ``error_message`` is "<gRPC status code name>: <message>", and
# the stream carries on. Engines that send no code (Triton) read as UNKNOWN.
STREAM_ERROR_FORMAT = "{code}: {message}"
UNKNOWN_CODE = "UNKNOWN"
_STREAM_ERROR = re.compile(r"([A-Z][A-Z_]*): (.*)", re.DOTALL)


def stream_error_message(code: str, message: str) -> str:
    """``error_message`` of a ModelStreamInferResponse: ``code`` is a gRPC status code name, e.g. INVALID_ARGUMENT."""
    return STREAM_ERROR_FORMAT.format(code=code, message=message)


def parse_stream_error(error_message: str) -> tuple[str, str]:
    """(status code name, message) of a stream response's ``error_message``; UNKNOWN when it names no code."""
    matched = _STREAM_ERROR.fullmatch(error_message)
    return (matched[1], matched[2]) if matched else (UNKNOWN_CODE, error_message)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata that presents ``token`` (none without a token)."""
    return ((AUTHORIZATION, bearer_value(token)),) if token else ()


def bearer_value(token: str) -> str:
    """The ``authorization`` value that presents ``token``."""
    return f"{BEARER} {token}"


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
    "SERVICE_NAME",
    "ATTENTION_MODEL",
    "REST_MODEL",
    "CLASSIFIER_MODEL",
    "FEATURES",
    "SPATIAL_ATTENTION",
    "CHANNEL_ATTENTION",
    "IMAGE",
    "PROBABILITIES",
    "ATTENTION_SCALE",
    "MODEL_OUTPUTS",
    "DEFAULT_OUTPUTS",
    "SCALE",
    "ZERO_POINT",
    "QUEUE_US",
    "COMPUTE_US",
    "SERVER_US",
    "BATCH_SIZE",
    "FINGERPRINT",
    "CLASS_NAMES",
    "CONFIG",
    "DATATYPE_FP32",
    "DATATYPE_FP16",
    "DATATYPE_UINT8",
    "DATATYPE_BYTES",
    "AUTHORIZATION",
    "BEARER",
    "STREAM_ERROR_FORMAT",
    "UNKNOWN_CODE",
    "stream_error_message",
    "parse_stream_error",
    "bearer_metadata",
    "bearer_value",
    "pb",
    "pb_grpc",
    "parameter",
    "parameter_value",
    "set_parameters",
    "read_parameters",
    "pack_bytes_elements",
    "unpack_bytes_elements",
]
