"""Request validation and response building for the two served models, as plain functions.

``fer_attention``: input ``features`` UINT8/FP16/FP32 ``[N, C, H, W]`` (the split
tensor), output ``features`` in the same encoding. ``fer_classifier``: input
``image`` as BYTES ``[N]`` (encoded JPEG/PNG face crops) or UINT8
``[N, S, S, 3]`` pixels, output ``probabilities`` FP32 ``[N, classes]``.
Every problem with a request is an :class:`InferenceError` carrying the gRPC
status to answer with and a message that says what is wrong.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from shared_model import codec
from shared_model.config import ModelConfig
from shared_model.preprocessing import pixels_to_tensor, prepare_face
from shared_model.protocol import (
    ATTENTION_MODEL,
    CLASSIFIER_MODEL,
    FEATURES,
    IMAGE,
    PROBABILITIES,
    SCALE,
    ZERO_POINT,
    pb,
    read_parameters,
    set_parameters,
    unpack_bytes_elements,
)

MODELS = (ATTENTION_MODEL, CLASSIFIER_MODEL)


class InferenceError(Exception):
    """A request the server refuses: a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> InferenceError:
    return InferenceError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_batch_size: int = 64
    max_image_bytes: int = 4 * 1024 * 1024
    max_decoded_pixels: int = 16 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024


def check_model(request: Any, fingerprint: str) -> str:
    """The requested model name; unknown names and versions are NOT_FOUND."""
    name = request.model_name
    if name not in MODELS:
        raise InferenceError(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; this server serves {', '.join(MODELS)}")
    version = request.model_version
    if version and version != fingerprint:
        raise InferenceError(
            grpc.StatusCode.NOT_FOUND,
            f"model {name} version {version} is not served here (this server holds version {fingerprint}); "
            "edge and cloud must load the same weights",
        )
    return name


def _single_input(request: pb.ModelInferRequest, name: str) -> tuple[Any, bytes | None]:
    if len(request.inputs) != 1 or request.inputs[0].name != name:
        got = [i.name for i in request.inputs]
        raise invalid(f"model {request.model_name} takes exactly one input named {name!r}, got {got}")
    if len(request.raw_input_contents) > 1:
        raise invalid(f"raw_input_contents holds {len(request.raw_input_contents)} buffers for 1 input")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    return request.inputs[0], raw


def _check_batch(shape: list[int], rank: int, limits: Limits, what: str) -> int:
    if len(shape) != rank:
        raise invalid(f"{what} must have rank {rank}, got shape {shape}")
    if any(d < 0 for d in shape):
        raise invalid(f"{what} shape {shape} has a negative dimension")
    batch = shape[0]
    if not 1 <= batch <= limits.max_batch_size:
        raise invalid(f"batch size {batch} outside 1..{limits.max_batch_size}")
    return batch


def _quantization(tensor: Any, request: pb.ModelInferRequest) -> tuple[float | None, int | None]:
    params = {**read_parameters(request.parameters), **read_parameters(tensor.parameters)}
    scale, zero_point = params.get(SCALE), params.get(ZERO_POINT)
    if scale is None or zero_point is None:
        raise invalid(f"UINT8 input {tensor.name!r} needs parameters 'scale' and 'zero_point' (on the tensor or the request)")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise invalid(f"'scale' must be a number, got {scale!r}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, (int, float)) or zero_point != int(zero_point):
        raise invalid(f"'zero_point' must be an integer, got {zero_point!r}")
    return float(scale), int(zero_point)


def _typed_contents(tensor: Any, encoding: str, count: int) -> bytes:
    """Elements sent in InferTensorContents instead of raw bytes."""
    if encoding == codec.FP32:
        values = np.asarray(tensor.contents.fp32_contents, dtype="<f4")
    elif encoding == codec.UINT8:
        values = np.asarray(tensor.contents.uint_contents, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise invalid("UINT8 contents hold values outside 0..255")
        values = values.astype(np.uint8)
    else:
        raise invalid("FP16 inputs must use raw_input_contents")
    if values.size != count:
        raise invalid(f"input {tensor.name!r} declares {count} elements but holds {values.size}")
    return values.tobytes()


def parse_features(request: pb.ModelInferRequest, config: ModelConfig, limits: Limits) -> tuple[Tensor, str]:
    """The split tensor of an ``fer_attention`` request as float32, and its wire encoding."""
    tensor, raw = _single_input(request, FEATURES)
    encoding = codec.ENCODING_OF_DATATYPE.get(tensor.datatype)
    if encoding is None:
        raise invalid(f"input {FEATURES!r} datatype must be UINT8, FP16 or FP32, got {tensor.datatype!r}")
    shape = list(tensor.shape)
    _check_batch(shape, 4, limits, f"input {FEATURES!r}")
    if tuple(shape[1:]) != config.split_shape:
        raise invalid(f"input {FEATURES!r} must be [N, {', '.join(map(str, config.split_shape))}], got {shape}")
    data = raw if raw is not None else _typed_contents(tensor, encoding, math.prod(shape))
    scale, zero_point = _quantization(tensor, request) if encoding == codec.UINT8 else (None, None)
    try:
        return torch.from_numpy(codec.decode_bytes(data, shape, encoding, scale, zero_point)), encoding
    except codec.CodecError as error:
        raise invalid(f"input {FEATURES!r}: {error}") from None


def features_response(request: pb.ModelInferRequest, output: Tensor, encoding: str, version: str) -> pb.ModelInferResponse:
    """``fer_attention`` response: the attended tensor in the request's encoding."""
    try:
        encoded = codec.encode(output, encoding)
    except codec.CodecError as error:
        raise InferenceError(grpc.StatusCode.INTERNAL, f"output could not be encoded: {error}") from None
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
    out = response.outputs.add(name=FEATURES, datatype=codec.PROTOCOL_DATATYPES[encoding], shape=list(encoded.shape))
    if encoding == codec.UINT8:
        set_parameters(out.parameters, {SCALE: float(encoded.scale), ZERO_POINT: int(encoded.zero_point)})
    response.raw_output_contents.append(encoded.data)
    return response


def decode_image(data: bytes, size: int, limits: Limits) -> np.ndarray:
    """An encoded face crop -> uint8 (size, size, 3); size and pixel limits checked before decoding."""
    if len(data) > limits.max_image_bytes:
        raise invalid(f"image of {len(data)} bytes exceeds the limit of {limits.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > limits.max_decoded_pixels:
                raise invalid(f"image of {width}x{height} pixels exceeds the limit of {limits.max_decoded_pixels}")
            gray = np.asarray(image.convert("L"))
    except InferenceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise invalid(f"image could not be decoded: {error}") from None
    return prepare_face(gray, size)


def parse_images(request: pb.ModelInferRequest, config: ModelConfig, limits: Limits) -> Tensor:
    """The face crops of an ``fer_classifier`` request as network input (N, 3, S, S)."""
    tensor, raw = _single_input(request, IMAGE)
    shape = list(tensor.shape)
    size = config.input_size
    if tensor.datatype == "BYTES":
        batch = _check_batch(shape, 1, limits, f"BYTES input {IMAGE!r}")
        try:
            images = unpack_bytes_elements(raw) if raw is not None else list(tensor.contents.bytes_contents)
        except ValueError as error:
            raise invalid(f"input {IMAGE!r}: {error}") from None
        if len(images) != batch:
            raise invalid(f"input {IMAGE!r} declares {batch} images but holds {len(images)}")
        return pixels_to_tensor(np.stack([decode_image(data, size, limits) for data in images]))
    if tensor.datatype == "UINT8":
        _check_batch(shape, 4, limits, f"UINT8 input {IMAGE!r}")
        if shape[1:] != [size, size, 3]:
            raise invalid(f"UINT8 input {IMAGE!r} must be [N, {size}, {size}, 3], got {shape}")
        data = raw if raw is not None else _typed_contents(tensor, codec.UINT8, math.prod(shape))
        if len(data) != math.prod(shape):
            raise invalid(f"UINT8 input {IMAGE!r} of shape {shape} needs {math.prod(shape)} bytes, got {len(data)}")
        return pixels_to_tensor(np.frombuffer(data, dtype=np.uint8).reshape(shape))
    raise invalid(f"input {IMAGE!r} datatype must be BYTES (encoded images) or UINT8 (pixels), got {tensor.datatype!r}")


def probabilities_response(request: pb.ModelInferRequest, probabilities: Tensor, version: str) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
    response.outputs.add(name=PROBABILITIES, datatype="FP32", shape=list(probabilities.shape))
    response.raw_output_contents.append(probabilities.detach().cpu().numpy().astype("<f4").tobytes())
    return response


def model_metadata(name: str, config: ModelConfig, version: str) -> pb.ModelMetadataResponse:
    """Tensors, class names and config of a served model (-1 marks the batch dimension)."""
    meta = pb.ModelMetadataResponse(name=name, versions=[version], platform="pytorch")
    if name == ATTENTION_MODEL:
        for tensors in (meta.inputs, meta.outputs):
            tensors.add(name=FEATURES, datatype="UINT8", shape=[-1, *config.split_shape])
    else:
        meta.inputs.add(name=IMAGE, datatype="BYTES", shape=[-1])
        meta.outputs.add(name=PROBABILITIES, datatype="FP32", shape=[-1, config.num_classes])
    set_parameters(meta.parameters, {"class_names": ",".join(config.class_names), "config": config.to_json()})
    return meta

