"""The project's full Triton model: the three served models for Triton Inference Server's Python backend.

``fer-train export --triton`` copies this file into each model's version folder
of the repository as ``model.py``, next to the ONNX export of that model
(``model.onnx``), so Triton runs it with ONNX Runtime inside (on a CPU the
fastest runtime for this network; ``--triton-device gpu`` asks for CUDA). It
serves what fer-cloud serves: UINT8, FP16 and FP32 split tensors with their
quantization parameters, requested outputs, encoded images. It imports NumPy,
ONNX Runtime, Pillow and this project's torch-free modules (codec,
preprocessing, protocol names), never torch: the Python that Triton's backend
stub finds first on ``PATH`` must have the project installed.
(``minimal_model.py`` beside it is the leanest model for the common request,
the reference of ``fer-bench server``.)

What Triton hands a Python-backend model, and what follows from it (as the
``tritonserver`` of ``nvidia-pytriton`` 0.7.0, Triton 2.51, does it):

- request-level parameters, as JSON (``request.parameters()``); tensor-level
  parameters do not reach the model. So ``scale``/``zero_point`` of a UINT8
  input must travel as request-level parameters (DESIGN.md accepts both);
- the requested output names as a set, and every output of the model when a
  request names none, so a request naming all three outputs of
  ``fer_attention`` cannot be told from one naming none: both get ``features``
  (the default of DESIGN.md). Outputs come back in the model's order;
- neither responses nor output tensors can carry parameters. So the attended
  map of a UINT8 request is quantized with the request's own ``scale`` and
  ``zero_point`` (the attended map is ``x * S * c`` with S, c in (0, 1): it
  lies inside the input's range, so nothing clips), the attention outputs use
  the fixed scale 1/255 and zero point 0 of the contract, and the fingerprint
  lives in the model configuration (``parameters``, read with the ModelConfig
  RPC), since ModelMetadata has no parameters in Triton;
- one datatype per input: the repository declares ``features`` as UINT8 (what
  the edge sends) or FP32/FP16 (``--triton-features``), and ``image`` as BYTES
  (encoded face crops).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from shared_model import codec
from shared_model.preprocessing import ImageRejected, decode_face_image, pixels_to_array
from shared_model.protocol import (
    ATTENTION_MODEL,
    ATTENTION_SCALE,
    CHANNEL_ATTENTION,
    CLASSIFIER_MODEL,
    DEFAULT_OUTPUTS,
    FEATURES,
    FINGERPRINT,
    IMAGE,
    MODEL_OUTPUTS,
    PROBABILITIES,
    SCALE,
    SPATIAL_ATTENTION,
    ZERO_POINT,
)

try:  # only inside Triton's backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (documentation, linters)
    pb_utils = None

__all__ = ["ENCODING_OF_DTYPE", "RequestError", "request_parameters", "quantization", "decode_features", "encode_like_input", "decode_image", "answered_outputs", "TritonPythonModel"]

ENCODING_OF_DTYPE = {np.dtype(np.uint8): codec.UINT8, np.dtype(np.float16): codec.FP16, np.dtype(np.float32): codec.FP32}


class RequestError(ValueError):
    """A request this model refuses; the message says what is wrong (answered as INVALID_ARGUMENT)."""


def request_parameters(text: str) -> dict[str, Any]:
    """The request-level parameters Triton hands the model (a JSON object)."""
    try:
        values = json.loads(text or "{}")
    except json.JSONDecodeError:
        raise RequestError(f"request parameters are not JSON: {text!r}") from None
    return values if isinstance(values, dict) else {}


def quantization(parameters: dict[str, Any]) -> tuple[float, int]:
    """``scale`` and ``zero_point`` of a UINT8 input (request-level parameters), checked."""
    scale, zero_point = parameters.get(SCALE), parameters.get(ZERO_POINT)
    if scale is None or zero_point is None:
        raise RequestError(
            f"UINT8 input {FEATURES!r} needs request parameters 'scale' and 'zero_point' "
            "(Triton does not hand tensor-level parameters to the model)"
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise RequestError(f"'scale' must be a positive finite number, got {scale!r}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, (int, float)) or zero_point != int(zero_point) or not 0 <= zero_point <= 255:
        raise RequestError(f"'zero_point' must be an integer in 0..255, got {zero_point!r}")
    return float(scale), int(zero_point)


def decode_features(array: np.ndarray, parameters: dict[str, Any]) -> tuple[np.ndarray, tuple[float, int] | None]:
    """The split tensor as float32, and the input's (scale, zero point) when it came as UINT8."""
    encoding = ENCODING_OF_DTYPE.get(array.dtype)
    if encoding is None:
        raise RequestError(f"input {FEATURES!r} datatype must be UINT8, FP16 or FP32, got {array.dtype}")
    params = quantization(parameters) if encoding == codec.UINT8 else None
    values = codec.decode_bytes(np.ascontiguousarray(array).tobytes(), array.shape, encoding, *(params or (None, None)))
    if not np.isfinite(values).all():
        raise RequestError(f"input {FEATURES!r} holds NaN or infinite values (check 'scale')")
    return values, params


def encode_like_input(values: np.ndarray, dtype: np.dtype, params: tuple[float, int] | None) -> np.ndarray:
    """The attended map in the input's encoding (UINT8 with the input's own scale and zero point)."""
    if params is not None:
        return codec.quantize(values, *params)
    return values.astype(dtype)


def decode_image(data: bytes, size: int, max_bytes: int, max_pixels: int) -> np.ndarray:
    """An encoded face crop -> uint8 (size, size, 3); size and pixel limits checked before decoding."""
    try:
        return decode_face_image(data, size, max_bytes, max_pixels)
    except ImageRejected as error:
        raise RequestError(str(error)) from None


def answered_outputs(model: str, requested: set[str] | list[str]) -> tuple[str, ...]:
    """What to answer: the requested outputs in the model's order; all of them means none was named."""
    names = set(requested)
    if not names or names == set(MODEL_OUTPUTS[model]):
        return DEFAULT_OUTPUTS[model]
    return tuple(name for name in MODEL_OUTPUTS[model] if name in names)


class TritonPythonModel:
    """One of ``fer_attention``, ``fer_rest``, ``fer_classifier`` (the model's name says which)."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime

        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        if self.name not in MODEL_OUTPUTS:
            raise ValueError(f"unknown model {self.name!r}; this file serves {', '.join(MODEL_OUTPUTS)}")
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.fingerprint = parameters.get(FINGERPRINT, "")
        self.input_size = int(parameters.get("input_size", "224"))
        self.max_image_bytes = int(parameters.get("max_image_bytes", str(4 * 1024 * 1024)))
        self.max_decoded_pixels = int(parameters.get("max_decoded_pixels", str(16 * 1024 * 1024)))
        self.max_images = int(parameters.get("max_images", "64"))  # per request (fer_classifier takes whole shapes)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("threads", "1"))
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", "0"))}))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        """One ONNX Runtime run for the valid requests of the batch; each request answered on its own."""
        responses: list[Any] = [None] * len(requests)
        batch: list[np.ndarray] = []
        owners: list[tuple[int, int, Any]] = []  # (request index, rows, what to encode its answer with)
        for index, request in enumerate(requests):
            try:
                values, context = self._parse(request)
            except (RequestError, codec.CodecError) as error:
                responses[index] = _error_response(str(error))
                continue
            batch.append(values)
            owners.append((index, len(values), context))
        if batch:
            results = self.session.run(None, {self.input_name: np.concatenate(batch)})
            start = 0
            for index, rows, context in owners:
                part = [r[start : start + rows] for r in results]
                start += rows
                try:
                    responses[index] = self._answer(requests[index], part, context)
                except (RequestError, codec.CodecError) as error:
                    responses[index] = _error_response(str(error))
        return responses

    def _parse(self, request: Any) -> tuple[np.ndarray, Any]:
        if self.name == CLASSIFIER_MODEL:
            images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy().reshape(-1)
            if not 1 <= len(images) <= self.max_images:
                raise RequestError(f"batch size {len(images)} outside 1..{self.max_images}")
            pixels = np.stack([decode_image(bytes(data), self.input_size, self.max_image_bytes, self.max_decoded_pixels) for data in images])
            return pixels_to_array(pixels), None
        array = pb_utils.get_input_tensor_by_name(request, FEATURES).as_numpy()
        values, params = decode_features(array, request_parameters(request.parameters()))
        return values, (array.dtype, params)

    def _answer(self, request: Any, results: list[np.ndarray], context: Any) -> Any:
        names = answered_outputs(self.name, request.requested_output_names())
        if self.name != ATTENTION_MODEL:
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(PROBABILITIES, results[0].astype(np.float32))])
        attended, spatial, channel = results
        dtype, params = context
        if not np.isfinite(attended).all():
            raise RequestError(f"output {FEATURES!r} is not finite; check the input's scale")
        tensors = {
            FEATURES: lambda: encode_like_input(attended, dtype, params),
            SPATIAL_ATTENTION: lambda: codec.quantize(spatial, ATTENTION_SCALE, 0),
            CHANNEL_ATTENTION: lambda: codec.quantize(channel, ATTENTION_SCALE, 0),
        }
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, tensors[name]()) for name in names])

    def finalize(self) -> None:
        self.session = None


def _error_response(message: str) -> Any:
    try:
        error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # older stubs take the message only
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)
