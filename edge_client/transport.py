"""gRPC client of the cloud service: unary calls, a bidirectional stream for video, health probes.

Every call has a deadline. Failures become :class:`RemoteError` with a short
``reason`` (``timeout``, ``unavailable``, ``version_mismatch``, ...) that the
runner reports as the fallback reason.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared_model import codec
from shared_model.protocol import (
    ATTENTION_MODEL,
    CLASSIFIER_MODEL,
    FEATURES,
    IMAGE,
    PROBABILITIES,
    SCALE,
    SERVICE_NAME,
    ZERO_POINT,
    pack_bytes_elements,
    pb,
    pb_grpc,
    read_parameters,
    set_parameters,
)

_REASONS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.INVALID_ARGUMENT: "rejected",
    grpc.StatusCode.CANCELLED: "cancelled",
}


class RemoteError(Exception):
    """A remote call that produced no usable answer; ``reason`` names why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _reason(code: grpc.StatusCode, detail: str) -> str:
    if code == grpc.StatusCode.NOT_FOUND and "version" in detail:
        return "version_mismatch"
    return _REASONS.get(code, f"error_{code.name.lower()}")


def remote_error(error: grpc.RpcError) -> RemoteError:
    code, detail = error.code(), error.details() or ""
    return RemoteError(_reason(code, detail), detail)


# Round-robin over every address the target resolves to; a call that meets an
# unavailable replica is retried (on another one), other errors are not.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": SERVICE_NAME}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.01s",
            "maxBackoff": "0.1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


def channel_target(target: str) -> str:
    """gRPC target for ``host:port``, ``ip:port,ip:port,...`` (several replicas) or a URI such as ``dns:///name:port``."""
    if "," not in target or ":///" in target or target.startswith(("ipv4:", "ipv6:")):
        return target
    addresses = [a.strip() for a in target.split(",") if a.strip()]
    scheme = "ipv6" if any(a.startswith("[") for a in addresses) else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


@dataclass
class RemoteCall:
    """What a remote call returned and what it cost."""

    output: np.ndarray
    round_trip_s: float
    server_s: float
    queue_s: float
    compute_s: float
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True)
class ClientSecurity:
    """TLS (server CA, optional client certificate for mTLS) and bearer token."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = None
    server_name: str | None = None  # override the name checked against the certificate

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca_cert:
            return None
        key = Path(self.client_key).read_bytes() if self.client_key else None
        chain = Path(self.client_cert).read_bytes() if self.client_cert else None
        return grpc.ssl_channel_credentials(Path(self.ca_cert).read_bytes(), key, chain)


class CloudClient:
    """Talks to ``fer-cloud`` at ``target`` (``host:port``) for one model version."""

    def __init__(self, target: str, version: str, security: ClientSecurity | None = None, timeout_s: float = 1.0) -> None:
        self.target = target
        self.version = version
        self.timeout_s = timeout_s
        self.security = security or ClientSecurity()
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
            # Reconnect promptly when a server comes back (gRPC's default backoff grows to minutes).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.security.server_name:
            options.append(("grpc.ssl_target_name_override", self.security.server_name))
        credentials = self.security.channel_credentials()
        address = channel_target(target)
        self.channel = grpc.secure_channel(address, credentials, options) if credentials else grpc.insecure_channel(address, options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self._ids = itertools.count()
        self._stream: StreamSession | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.security.token}"),) if self.security.token else ()

    def healthy(self, timeout_s: float | None = None) -> bool:
        """The standard health check (used by the circuit breaker's probe)."""
        try:
            reply = self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout_s or self.timeout_s, wait_for_ready=True
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def model_metadata(self, model: str = ATTENTION_MODEL) -> pb.ModelMetadataResponse:
        try:
            return self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise remote_error(error) from None

    # -- requests -----------------------------------------------------------------

    def attention_request(self, features: np.ndarray, encoding: str = codec.UINT8) -> pb.ModelInferRequest:
        encoded = codec.encode(features, encoding)
        request = pb.ModelInferRequest(model_name=ATTENTION_MODEL, model_version=self.version, id=str(next(self._ids)))
        tensor = request.inputs.add(name=FEATURES, datatype=codec.PROTOCOL_DATATYPES[encoding], shape=list(encoded.shape))
        if encoding == codec.UINT8:
            set_parameters(tensor.parameters, {SCALE: float(encoded.scale), ZERO_POINT: int(encoded.zero_point)})
        request.raw_input_contents.append(encoded.data)
        return request

    def image_request(self, image: bytes | np.ndarray) -> pb.ModelInferRequest:
        """Encoded image bytes (BYTES [1]) or uint8 pixels (H, W, 3) (UINT8 [1, H, W, 3])."""
        request = pb.ModelInferRequest(model_name=CLASSIFIER_MODEL, model_version=self.version, id=str(next(self._ids)))
        if isinstance(image, (bytes, bytearray)):
            request.inputs.add(name=IMAGE, datatype="BYTES", shape=[1])
            request.raw_input_contents.append(pack_bytes_elements([bytes(image)]))
        else:
            pixels = np.ascontiguousarray(image, dtype=np.uint8)
            request.inputs.add(name=IMAGE, datatype="UINT8", shape=[1, *pixels.shape])
            request.raw_input_contents.append(pixels.tobytes())
        return request

    # -- calls ----------------------------------------------------------------------

    def infer(self, request: pb.ModelInferRequest, timeout_s: float | None = None, use_stream: bool = False) -> RemoteCall:
        """Send one request (unary, or over the open stream) and decode its answer."""
        started = time.perf_counter()
        timeout = timeout_s or self.timeout_s
        if use_stream:
            response = self.stream().infer(request, timeout)
        else:
            try:
                response = self.stub.ModelInfer(request, timeout=timeout, metadata=self.metadata)
            except grpc.RpcError as error:
                raise remote_error(error) from None
        round_trip = time.perf_counter() - started
        return _decode_response(request, response, self.version, round_trip)

    def stream(self) -> "StreamSession":
        if self._stream is None or self._stream.broken:
            if self._stream is not None:
                self._stream.close()
            self._stream = StreamSession(self.stub, self.metadata)
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self.channel.close()


def _decode_response(request: pb.ModelInferRequest, response: pb.ModelInferResponse, version: str, round_trip: float) -> RemoteCall:
    if response.model_version and response.model_version != version:
        raise RemoteError("version_mismatch", f"server answered with version {response.model_version}, edge holds {version}")
    if len(response.outputs) != 1 or len(response.raw_output_contents) != 1:
        raise RemoteError("invalid_response", "expected exactly one output with raw contents")
    out, raw = response.outputs[0], response.raw_output_contents[0]
    params = read_parameters(out.parameters)
    try:
        if request.model_name == ATTENTION_MODEL:
            if out.name != FEATURES or out.datatype != request.inputs[0].datatype or list(out.shape) != list(request.inputs[0].shape):
                raise RemoteError("invalid_response", f"unexpected output {out.name} {out.datatype} {list(out.shape)}")
            encoding = codec.ENCODING_OF_DATATYPE[out.datatype]
            tensor = codec.decode_bytes(raw, out.shape, encoding, params.get(SCALE), params.get(ZERO_POINT))
        else:
            if out.name != PROBABILITIES or out.datatype != "FP32":
                raise RemoteError("invalid_response", f"unexpected output {out.name} {out.datatype}")
            tensor = codec.decode_bytes(raw, out.shape, codec.FP32)
    except codec.CodecError as error:
        raise RemoteError("invalid_response", str(error)) from None
    timings = read_parameters(response.parameters)
    return RemoteCall(
        output=tensor,
        round_trip_s=round_trip,
        server_s=timings.get("server_us", 0) / 1e6,
        queue_s=timings.get("queue_us", 0) / 1e6,
        compute_s=timings.get("compute_us", 0) / 1e6,
        bytes_up=request.ByteSize(),
        bytes_down=response.ByteSize(),
    )


class StreamSession:
    """One ``ModelStreamInfer`` call carrying many requests; answers matched by request id.

    A reader thread drains the response stream. If the stream breaks (server
    killed, connection lost), every waiting request fails at once with
    ``unavailable`` and the session is marked broken so the client opens a new one.
    """

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._outgoing: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
        self._waiting: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.broken = False
        self._call = stub.ModelStreamInfer(self._requests(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="stream-reader", daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[pb.ModelInferRequest]:
        while (request := self._outgoing.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for reply in self._call:
                with self._lock:
                    future = self._waiting.pop(reply.infer_response.id, None)
                if future is not None:
                    future.set_result(reply)
            failure = RemoteError("unavailable", "the server closed the stream")
        except grpc.RpcError as error:
            failure = remote_error(error)
        self._fail_all(failure)

    def _fail_all(self, failure: RemoteError) -> None:
        with self._lock:
            self.broken = True
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(failure)

    def infer(self, request: pb.ModelInferRequest, timeout_s: float) -> pb.ModelInferResponse:
        future: Future = Future()
        with self._lock:
            if self.broken:
                raise RemoteError("unavailable", "stream is broken")
            self._waiting[request.id] = future
        self._outgoing.put(request)
        try:
            reply = future.result(timeout=timeout_s)
        except FutureTimeout:
            with self._lock:
                self._waiting.pop(request.id, None)
            raise RemoteError("timeout", f"no answer within {timeout_s:.3f} s") from None
        if reply.error_message:
            code = reply.error_message.split(":", 1)[0]
            status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
            raise RemoteError(_reason(status, reply.error_message), reply.error_message)
        return reply.infer_response

    def close(self) -> None:
        self._outgoing.put(None)
        self._call.cancel()

