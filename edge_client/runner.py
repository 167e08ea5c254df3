"""The edge runner: one face in, exactly one result out, by the chosen strategy or locally.

Strategies (see DESIGN.md): ``edge`` runs everything here; ``cloud`` sends the
face (JPEG, PNG or raw pixels) and gets class probabilities; ``split`` runs the
head, sends the split tensor, gets the attended tensor back and runs the tail.
Any remote failure (error, timeout, refusal, version mismatch, open circuit)
is answered locally from the same weights, reusing the head's output when the
split strategy already computed it; the result says so and why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from shared_model import codec
from shared_model.preprocessing import pixels_to_array

from .backends import Backend, as_backend
from .breaker import CircuitBreaker
from .transport import CloudClient, RemoteCall, RemoteError

EDGE = "edge"
CLOUD = "cloud"
SPLIT = "split"
STRATEGIES = (EDGE, CLOUD, SPLIT)
IMAGE_FORMATS = ("jpeg", "png", "raw")


@dataclass
class Latency:
    """Milliseconds spent in each part of one classification."""

    head: float = 0.0
    encode: float = 0.0
    network: float = 0.0
    server: float = 0.0
    tail: float = 0.0
    total: float = 0.0


@dataclass
class FaceResult:
    label: str
    probabilities: dict[str, float]
    strategy: str  # what produced the answer: edge, cloud or split
    requested_strategy: str
    fallback: bool = False
    fallback_reason: str | None = None
    latency: Latency = field(default_factory=Latency)
    bytes_up: int = 0
    bytes_down: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class EdgeRunner:
    """Classifies prepared faces (uint8 (S, S, 3)) with a strategy and local fallback.

    ``model`` is a :class:`~edge_client.backends.Backend` or a PyTorch ``FERNet``.
    """

    def __init__(
        self,
        model: Backend | object,
        strategy: str = EDGE,
        client: CloudClient | None = None,
        breaker: CircuitBreaker | None = None,
        encoding: str = codec.UINT8,
        image_format: str = "jpeg",
        jpeg_quality: int = 90,
        timeout_s: float = 1.0,
        use_stream: bool = False,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if strategy != EDGE and client is None:
            raise ValueError(f"strategy {strategy!r} needs a cloud address")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {image_format!r}; expected one of {IMAGE_FORMATS}")
        self.backend = as_backend(model)
        self.config = self.backend.config
        self.class_names = self.config.class_names
        self.strategy = strategy
        self.client = client
        self.breaker = breaker or CircuitBreaker(probe=(lambda: client.healthy()) if client else None)
        self.encoding = encoding
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.timeout_s = timeout_s
        self.use_stream = use_stream

    def classify(self, pixels: np.ndarray) -> FaceResult:
        """Exactly one result for one face; never raises for a remote failure."""
        started = time.perf_counter()
        if self.strategy == SPLIT:
            result = self._split(pixels)
        elif self.strategy == CLOUD:
            result = self._cloud(pixels)
        else:
            result = self._local(pixels_to_array(pixels), Latency())
        result.latency.total = _ms(time.perf_counter() - started)
        return result

    # -- strategies -------------------------------------------------------------

    def _local(self, x: np.ndarray, latency: Latency, reason: str | None = None) -> FaceResult:
        t0 = time.perf_counter()
        z = self.backend.head(x)
        latency.head = _ms(time.perf_counter() - t0)
        return self._finish_locally(z, latency, reason)

    def _finish_locally(self, z: np.ndarray, latency: Latency, reason: str | None) -> FaceResult:
        t0 = time.perf_counter()
        scores = self.backend.tail(self.backend.cloud(z))
        latency.tail = _ms(time.perf_counter() - t0)
        return self._result(softmax(scores)[0], EDGE, latency, reason)

    def _split(self, pixels: np.ndarray) -> FaceResult:
        latency = Latency()
        t0 = time.perf_counter()
        z = self.backend.head(pixels_to_array(pixels))
        latency.head = _ms(time.perf_counter() - t0)
        if not self.breaker.allow():
            return self._finish_locally(z, latency, "circuit_open")
        t0 = time.perf_counter()
        try:
            request = self.client.attention_request(z, self.encoding)  # type: ignore[union-attr]
        except codec.CodecError as error:
            return self._finish_locally(z, latency, f"encode_error: {error}")
        latency.encode = _ms(time.perf_counter() - t0)
        try:
            call = self._call(request)
        except RemoteError as error:
            return self._finish_locally(z, latency, error.reason)
        t0 = time.perf_counter()
        scores = self.backend.tail(call.output)
        latency.tail = _ms(time.perf_counter() - t0)
        return self._remote_result(softmax(scores)[0], SPLIT, latency, call)

    def _cloud(self, pixels: np.ndarray) -> FaceResult:
        latency = Latency()
        if not self.breaker.allow():
            return self._local(pixels_to_array(pixels), latency, "circuit_open")
        t0 = time.perf_counter()
        payload = self.encode_image(pixels)
        request = self.client.image_request(payload)  # type: ignore[union-attr]
        latency.encode = _ms(time.perf_counter() - t0)
        try:
            call = self._call(request)
        except RemoteError as error:
            return self._local(pixels_to_array(pixels), latency, error.reason)
        probabilities = call.output[0]
        if probabilities.size != len(self.class_names):
            self.breaker.record_failure()
            return self._local(pixels_to_array(pixels), latency, "invalid_response")
        return self._remote_result(probabilities, CLOUD, latency, call)

    # -- helpers ----------------------------------------------------------------

    def encode_image(self, pixels: np.ndarray) -> bytes | np.ndarray:
        """What the cloud strategy sends: compressed gray face, or the raw (S, S, 3) pixels as in the paper."""
        if self.image_format == "raw":
            return pixels
        gray = pixels[:, :, 0]
        if self.image_format == "png":
            ok, buffer = cv2.imencode(".png", gray)
        else:
            ok, buffer = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError(f"could not encode the face as {self.image_format}")
        return buffer.tobytes()

    def _call(self, request: Any) -> RemoteCall:
        try:
            call = self.client.infer(request, self.timeout_s, self.use_stream)  # type: ignore[union-attr]
        except RemoteError:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return call

    def _remote_result(self, probabilities: np.ndarray, strategy: str, latency: Latency, call: RemoteCall) -> FaceResult:
        latency.server = _ms(call.server_s)
        latency.network = _ms(max(call.round_trip_s - call.server_s, 0.0))
        result = self._result(probabilities, strategy, latency, None)
        result.bytes_up, result.bytes_down = call.bytes_up, call.bytes_down
        return result

    def _result(self, probabilities: np.ndarray, produced_by: str, latency: Latency, reason: str | None) -> FaceResult:
        values = [float(p) for p in probabilities]
        return FaceResult(
            label=self.class_names[int(np.argmax(values))],
            probabilities={name: round(p, 6) for name, p in zip(self.class_names, values)},
            strategy=produced_by,
            requested_strategy=self.strategy,
            fallback=reason is not None,
            fallback_reason=reason,
            latency=latency,
        )
