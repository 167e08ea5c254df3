"""Request validation and response building for the two served models, as plain functions.

``fer_attention``: input ``features`` UINT8/FP16/FP32 ``[N, C, H, W]`` (the split
tensor); outputs ``features`` (the attended map, in the input's encoding),
``spatial_attention`` UINT8 ``[N, 1, H, W]`` and ``channel_attention`` UINT8
``[N, C]`` (fixed scale 1/255). ``fer_rest``: the same input, output
``probabilities``. ``fer_classifier``: input ``image`` as BYTES ``[N]`` (encoded
JPEG/PNG face crops of any size) or UINT8 ``[N, S, S, 3]`` pixels, output
``probabilities`` FP32 ``[N, classes]``. A request that names outputs gets
exactly those; one that names none gets the model's default
(:data:`~shared_model.protocol.DEFAULT_OUTPUTS`).
Every problem with a request is an :class:`InferenceError` carrying the gRPC
status to answer with and a message that says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any, Sequence, Union

import grpc
import numpy as np

from shared_model import codec
from shared_model.config import ModelConfig
from shared_model.protocol import (
    ATTENTION_MODEL,
    ATTENTION_SCALE,
    CHANNEL_ATTENTION,
    CLASS_NAMES,
    CLASSIFIER_MODEL,
    CONFIG,
    DATATYPE_BYTES,
    DATATYPE_FP32,
    DATATYPE_UINT8,
    DEFAULT_OUTPUTS,
    FEATURES,
    FINGERPRINT,
    IMAGE,
    MODEL_OUTPUTS,
    PROBABILITIES,
    REST_MODEL,
    SCALE,
    SPATIAL_ATTENTION,
    ZERO_POINT,
    pb,
    read_parameters,
    set_parameters,
    unpack_bytes_elements,
)

__all__ = [
    "MODELS", "MAX_INPUTS", "ECHO_CHARS", "ECHO_ITEMS", "echoed", "InferenceError", "invalid", "Limits", "check_model", "requested_outputs", "parse_features", "refuse_non_finite",
    "AttentionOutputs", "attention_response", "decode_image", "parse_images", "probabilities_response",
    "model_metadata",
]

MODELS = (ATTENTION_MODEL, REST_MODEL, CLASSIFIER_MODEL)
MAX_INPUTS = 1  # every served model takes exactly one input tensor
ECHO_CHARS = 100  # of a client's string shown in an error message (gRPC's trailers hold ~8 KB in all)
ECHO_ITEMS = 4  # of a client's list shown in an error message
Buffer = Union[bytes, memoryview]  # a tensor's bytes: received (a view of the request) or to send
Response = tuple[pb.ModelInferResponse, list[Buffer]]  # metadata, and the raw_output_contents in order


class InferenceError(Exception):
    """A request the server refuses: a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> InferenceError:
    return InferenceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def echoed(value: Any) -> str:
    """A value a client sent, as an error message shows it: bounded whatever its size.

    Strings and bytes as their repr, cut after :data:`ECHO_CHARS` characters
    (with an ellipsis and the length); sequences as their first
    :data:`ECHO_ITEMS` items, each echoed, and their length.
    """
    if isinstance(value, (str, bytes)):
        if len(value) <= ECHO_CHARS:
            return repr(value)
        return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, SequenceABC):
        items = ", ".join(echoed(item) for item in value[:ECHO_ITEMS])
        return f"[{items}]" if len(value) <= ECHO_ITEMS else f"[{items}, ...] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}..."


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
        raise InferenceError(grpc.StatusCode.NOT_FOUND, f"unknown model {echoed(name)}; this server serves {', '.join(MODELS)}")
    version = request.model_version
    if version and version != fingerprint:
        raise InferenceError(
            grpc.StatusCode.NOT_FOUND,
            f"model {name} version {echoed(version)} is not served here (this server holds version {fingerprint}); "
            "edge and cloud must load the same weights",
        )
    return name


def requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """The outputs a request names (the model's default when it names none); unknown names are INVALID_ARGUMENT."""
    names = tuple(output.name for output in request.outputs)
    if not names:
        return DEFAULT_OUTPUTS[request.model_name]
    served = MODEL_OUTPUTS[request.model_name]
    unknown = [name for name in names if name not in served]
    if unknown:
        raise invalid(f"model {request.model_name} has no output {echoed(unknown)}; it serves {', '.join(served)}")
    if len(set(names)) != len(names):
        raise invalid(f"outputs {echoed(names)} name the same output twice")
    return names


def _single_input(request: pb.ModelInferRequest, raws: Sequence[Buffer], name: str) -> tuple[Any, Buffer | None]:
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != name:
        raise invalid(f"model {request.model_name} takes exactly one input named {name!r}, got {echoed([i.name for i in inputs])}")
    if len(raws) > MAX_INPUTS:
        raise invalid(f"raw_input_contents holds {len(raws)} buffers for {MAX_INPUTS} input")
    return inputs[0], (raws[0] if raws else None)


def _shape(tensor: Any, rank: int, what: str) -> list[int]:
    """A tensor's shape, refused before it is copied or shown when its rank is not ``rank``."""
    if len(tensor.shape) != rank:
        raise invalid(f"{what} must have rank {rank}, got shape {echoed(tensor.shape)}")
    return list(tensor.shape)


def _check_batch(shape: list[int], limits: Limits, what: str) -> int:
    """The batch of a shape :func:`_shape` already checked for rank: no negative dimension, within the limit."""
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
        raise invalid(f"'scale' must be a number, got {echoed(scale)}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, (int, float)) or not float(zero_point).is_integer():  # NaN, inf: not integers
        raise invalid(f"'zero_point' must be an integer in 0..255, got {echoed(zero_point)}")
    return float(scale), int(zero_point)


def _typed_contents(tensor: Any, encoding: str, count: int) -> Buffer:
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


def parse_features(
    request: pb.ModelInferRequest, raws: Sequence[Buffer], config: ModelConfig, limits: Limits, check_finite: bool = True
) -> tuple[np.ndarray, str]:
    """The split tensor of a features request as float32, and its wire encoding.

    ``raws``: the request's ``raw_input_contents`` (:func:`cloud_server.wire.split_infer_request`
    gives them as views of the received bytes). FP32 is not copied: the array is
    a read-only view of those bytes. ``check_finite=False``: NaN and infinity are
    left for the batch function to flag (see :func:`refuse_non_finite`).
    """
    tensor, raw = _single_input(request, raws, FEATURES)
    encoding = codec.ENCODING_OF_DATATYPE.get(tensor.datatype)
    if encoding is None:
        raise invalid(f"input {FEATURES!r} datatype must be UINT8, FP16 or FP32, got {echoed(tensor.datatype)}")
    shape = _shape(tensor, 4, f"input {FEATURES!r}")
    _check_batch(shape, limits, f"input {FEATURES!r}")
    if tuple(shape[1:]) != config.split_shape:
        raise invalid(f"input {FEATURES!r} must be [N, {', '.join(map(str, config.split_shape))}], got {shape}")
    data = raw if raw is not None else _typed_contents(tensor, encoding, math.prod(shape))
    if encoding == codec.FP32 and memoryview(data).nbytes == 4 * math.prod(shape):  # the common case, without a copy
        array = np.frombuffer(data, dtype="<f4").reshape(shape)
        finite = not check_finite or bool(np.isfinite(array).all())  # isfinite never warns
    else:
        scale, zero_point = _quantization(tensor, request) if encoding == codec.UINT8 else (None, None)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing scale is refused just below, not warned about
            try:
                array = codec.decode_bytes(data, shape, encoding, scale, zero_point)
            except codec.CodecError as error:
                raise invalid(f"input {FEATURES!r}: {error}") from None
            finite = not check_finite or bool(np.isfinite(array).all())
    if not finite:
        raise _non_finite()
    return array, encoding


def _non_finite() -> InferenceError:
    return invalid(f"input {FEATURES!r} holds NaN or infinite values (check 'scale')")


def refuse_non_finite(flags: np.ndarray) -> None:
    """A request whose rows of a batch output were flagged non-finite (0 in the flags column) is INVALID_ARGUMENT."""
    if not (flags[0] if len(flags) == 1 else flags.all()):  # one face, the common case: a scalar read (np.all costs microseconds)
        raise _non_finite()


@dataclass(frozen=True)
class AttentionOutputs:
    """What ``fer_attention`` computes for a batch: the attended map and the attention that makes it."""

    features: np.ndarray  # (N, C, H, W) = input * spatial * channel
    spatial: np.ndarray  # (N, 1, H, W), values in (0, 1)
    channel: np.ndarray  # (N, C), values in (0, 1)

    def pack(self) -> np.ndarray:
        """One (N, C*H*W + H*W + C) array, so a batch can be split per request along dim 0."""
        batch = self.features.shape[0]
        return np.concatenate([self.features.reshape(batch, -1), self.spatial.reshape(batch, -1), self.channel], axis=1)

    @classmethod
    def unpack(cls, packed: np.ndarray, split_shape: tuple[int, int, int]) -> "AttentionOutputs":
        channels, height, width = split_shape
        batch, pixels = packed.shape[0], height * width
        mapped = channels * pixels
        features, spatial = packed[:, :mapped], packed[:, mapped : mapped + pixels]
        channel = packed[:, mapped + pixels : mapped + pixels + channels]  # any column after: finite flags
        return cls(features.reshape(batch, channels, height, width), spatial.reshape(batch, 1, height, width), channel)


def _encode_output(tensor: np.ndarray, encoding: str, name: str) -> codec.EncodedTensor:
    try:
        return codec.encode(tensor, encoding)
    except codec.CodecError as error:  # e.g. an input scale so large that the output overflows
        raise invalid(f"output {name!r} cannot be encoded as {encoding}: {error}; check the input's scale") from None


def _add_attention(response: pb.ModelInferResponse, contents: list[Buffer], name: str, values: np.ndarray) -> None:
    """An attention output as UINT8 with the fixed scale 1/255 and zero point 0."""
    quantized = codec.quantize(np.asarray(values, dtype=np.float32), ATTENTION_SCALE, 0)
    out = response.outputs.add(name=name, datatype=DATATYPE_UINT8, shape=quantized.shape)
    out.parameters[SCALE].double_param = ATTENTION_SCALE
    out.parameters[ZERO_POINT].int64_param = 0
    contents.append(quantized.data)


def attention_response(
    request: pb.ModelInferRequest, outputs: AttentionOutputs, encoding: str, version: str, names: tuple[str, ...]
) -> Response:
    """``fer_attention`` response with exactly the requested outputs, in the order requested.

    An FP32 attended map is sent as it is (a view of the batch output, not
    copied): its input was checked finite, and the attention lies in (0, 1).
    """
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
    contents: list[Buffer] = []
    for name in names:
        if name == FEATURES:
            if encoding == codec.FP32:  # the common case, in one step
                features = outputs.features
                response.outputs.add(name=FEATURES, datatype=DATATYPE_FP32, shape=features.shape)
                contents.append(np.ascontiguousarray(features, dtype="<f4").data)
                continue
            encoded = _encode_output(outputs.features, encoding, FEATURES)
            out = response.outputs.add(name=FEATURES, datatype=codec.PROTOCOL_DATATYPES[encoding], shape=encoded.shape)
            if encoding == codec.UINT8:
                out.parameters[SCALE].double_param = float(encoded.scale)
                out.parameters[ZERO_POINT].int64_param = int(encoded.zero_point)
            contents.append(encoded.data)
        else:
            _add_attention(response, contents, name, outputs.spatial if name == SPATIAL_ATTENTION else outputs.channel)
    return response, contents


def decode_image(data: bytes, size: int, limits: Limits) -> np.ndarray:
    """An encoded face crop -> uint8 (size, size, 3); size and pixel limits checked before decoding."""
    from shared_model.preprocessing import ImageRejected, decode_face_image

    try:
        return decode_face_image(data, size, limits.max_image_bytes, limits.max_decoded_pixels)
    except ImageRejected as error:
        raise invalid(str(error)) from None


def parse_images(request: pb.ModelInferRequest, raws: Sequence[Buffer], config: ModelConfig, limits: Limits) -> np.ndarray:
    """The face crops of an ``fer_classifier`` request as network input (N, 3, S, S)."""
    tensor, raw = _single_input(request, raws, IMAGE)
    size = config.input_size
    if tensor.datatype == DATATYPE_BYTES:
        shape = _shape(tensor, 1, f"BYTES input {IMAGE!r}")
        batch = _check_batch(shape, limits, f"BYTES input {IMAGE!r}")
        try:
            images = unpack_bytes_elements(bytes(raw)) if raw is not None else list(tensor.contents.bytes_contents)
        except ValueError as error:
            raise invalid(f"input {IMAGE!r}: {error}") from None
        if len(images) != batch:
            raise invalid(f"input {IMAGE!r} declares {batch} images but holds {len(images)}")
        return _pixels_to_array(np.stack([decode_image(data, size, limits) for data in images]))
    if tensor.datatype == DATATYPE_UINT8:
        shape = _shape(tensor, 4, f"UINT8 input {IMAGE!r}")
        _check_batch(shape, limits, f"UINT8 input {IMAGE!r}")
        if shape[1:] != [size, size, 3]:
            raise invalid(f"UINT8 input {IMAGE!r} must be [N, {size}, {size}, 3], got {shape}")
        data = raw if raw is not None else _typed_contents(tensor, codec.UINT8, math.prod(shape))
        if len(data) != math.prod(shape):
            raise invalid(f"UINT8 input {IMAGE!r} of shape {shape} needs {math.prod(shape)} bytes, got {len(data)}")
        return _pixels_to_array(np.frombuffer(data, dtype=np.uint8).reshape(shape))
    raise invalid(f"input {IMAGE!r} datatype must be BYTES (encoded images) or UINT8 (pixels), got {echoed(tensor.datatype)}")


def _pixels_to_array(pixels: np.ndarray) -> np.ndarray:
    from shared_model.preprocessing import pixels_to_array  # OpenCV: loaded when the first image comes

    return pixels_to_array(pixels)


def probabilities_response(request: pb.ModelInferRequest, probabilities: np.ndarray, version: str) -> Response:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
    response.outputs.add(name=PROBABILITIES, datatype=DATATYPE_FP32, shape=probabilities.shape)
    return response, [np.ascontiguousarray(probabilities, dtype="<f4").data]


def model_metadata(name: str, config: ModelConfig, version: str) -> pb.ModelMetadataResponse:
    """Tensors, class names and config of a served model (-1 marks the batch dimension)."""
    meta = pb.ModelMetadataResponse(name=name, versions=[version], platform="pytorch")
    if name == CLASSIFIER_MODEL:
        meta.inputs.add(name=IMAGE, datatype=DATATYPE_BYTES, shape=[-1])
    else:
        meta.inputs.add(name=FEATURES, datatype=DATATYPE_UINT8, shape=[-1, *config.split_shape])
    if name == ATTENTION_MODEL:
        channels, height, width = config.split_shape
        meta.outputs.add(name=FEATURES, datatype=DATATYPE_UINT8, shape=[-1, *config.split_shape])
        meta.outputs.add(name=SPATIAL_ATTENTION, datatype=DATATYPE_UINT8, shape=[-1, 1, height, width])
        meta.outputs.add(name=CHANNEL_ATTENTION, datatype=DATATYPE_UINT8, shape=[-1, channels])
    else:
        meta.outputs.add(name=PROBABILITIES, datatype=DATATYPE_FP32, shape=[-1, config.num_classes])
    set_parameters(meta.parameters, {CLASS_NAMES: ",".join(config.class_names), CONFIG: config.to_json(), FINGERPRINT: version})
    return meta

