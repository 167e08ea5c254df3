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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared_model import codec
from shared_model.protocol import (
    ATTENTION_MODEL,
    ATTENTION_SCALE,
    CHANNEL_ATTENTION,
    CLASSIFIER_MODEL,
    COMPUTE_US,
    DATATYPE_BYTES,
    DATATYPE_FP32,
    DATATYPE_UINT8,
    DEFAULT_OUTPUTS,
    FEATURES,
    FINGERPRINT,
    IMAGE,
    PROBABILITIES,
    QUEUE_US,
    SCALE,
    SERVER_US,
    SERVICE_NAME,
    SPATIAL_ATTENTION,
    ZERO_POINT,
    bearer_metadata,
    pack_bytes_elements,
    parse_stream_error,
    pb,
    pb_grpc,
    read_parameters,
    set_parameters,
)

__all__ = [
    "RemoteError", "remote_error", "SERVICE_CONFIG", "channel_target", "RemoteCall", "check_token", "ClientSecurity",
    "CloudClient", "StreamSession",
]

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
    if code == grpc.StatusCode.NOT_FOUND:
        return "version_mismatch" if "version" in detail else "not_served"
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
    """What a remote call returned (every output by name, decoded to float32) and what it cost."""

    outputs: dict[str, np.ndarray]
    round_trip_s: float
    server_s: float
    queue_s: float
    compute_s: float
    bytes_up: int
    bytes_down: int

    @property
    def output(self) -> np.ndarray:
        """The only (or first) output."""
        return next(iter(self.outputs.values()))

    @property
    def network_s(self) -> float:
        """The round trip less the server's own time: what the link (and the client's own handling) cost."""
        return max(self.round_trip_s - self.server_s, 0.0)


def check_token(token: str | None) -> None:
    """Refuse a bearer token no HTTP/2 header value can carry (ValueError); the message never shows the token.

    gRPC would otherwise fail every call with a misleading INTERNAL "Invalid metadata".
    """
    bad = next((c for c in token or "" if not " " <= c <= "~"), None)  # HTTP/2 header values: printable ASCII
    if bad is not None:
        what = "a control character (a line break?)" if bad.isascii() else "a non-ASCII character"
        raise ValueError(f"the bearer token (--token or $FER_CLOUD_TOKEN) contains {what}, which no gRPC header can carry; the token is not shown here")


@dataclass(frozen=True)
class ClientSecurity:
    """TLS (server CA, optional client certificate for mTLS) and bearer token.

    Any TLS option means TLS: without ``ca_cert`` the server is verified against
    the system's roots. Only with none at all is the channel plaintext. The
    token is checked (:func:`check_token`) and never shown by ``repr``.
    """

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = field(default=None, repr=False)
    server_name: str | None = None  # override the name checked against the certificate

    def __post_init__(self) -> None:
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("mutual TLS needs both a client certificate (--tls-cert) and its key (--tls-key)")
        check_token(self.token)

    @property
    def uses_tls(self) -> bool:
        return any((self.ca_cert, self.client_cert, self.client_key, self.server_name))

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials (the system's roots without a CA file); None, meaning plaintext, only without any TLS option."""
        if not self.uses_tls:
            return None
        roots = Path(self.ca_cert).read_bytes() if self.ca_cert else None
        key = Path(self.client_key).read_bytes() if self.client_key else None
        chain = Path(self.client_cert).read_bytes() if self.client_cert else None
        return grpc.ssl_channel_credentials(roots, key, chain)


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
            # A silent link (no reset, no answer) is noticed by keepalive pings, not waited on;
            # the server permits pings this often (cloud_server.server.KEEPALIVE_PERMIT_OPTIONS).
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
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
        # Models served by an engine with versions of its own (Triton: integers), whose
        # fingerprint the edge confirmed from the model's configuration: the version to
        # name in requests. Such an engine hands only request-level parameters to its
        # models, so scale and zero point travel at the request level too.
        self.engine_versions: dict[str, str] = {}
        self._stream_lock = threading.Lock()  # frames in flight share one stream

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.security.token)

    def healthy(self, timeout_s: float | None = None) -> bool:
        """The standard health check (used by the circuit breaker's probe)."""
        try:
            reply = self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout_s or self.timeout_s, wait_for_ready=True
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def round_trip(self, timeout_s: float | None = None) -> float | None:
        """Seconds for one tiny call (``ServerLive``), or None when it fails: the link's round-trip time."""
        started = time.perf_counter()
        try:
            self.stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError:
            return None
        return time.perf_counter() - started

    def model_metadata(self, model: str = ATTENTION_MODEL) -> pb.ModelMetadataResponse:
        try:
            return self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise remote_error(error) from None

    def model_config_parameters(self, model: str) -> dict[str, str]:
        """The ``parameters`` of a model's configuration (Triton's ModelConfig extension); RemoteError where not served."""
        try:
            reply = self.stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise remote_error(error) from None
        return {key: value.string_value for key, value in reply.config.parameters.items()}

    # -- requests -----------------------------------------------------------------

    def _request(self, model: str, outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model, model_version=self.engine_versions.get(model, self.version), id=str(next(self._ids)))
        for name in outputs:
            request.outputs.add(name=name)
        return request

    def features_request(self, model: str, features: np.ndarray, encoding: str = codec.UINT8, outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
        """The split tensor for ``fer_attention`` or ``fer_rest``; ``outputs`` names what to send back (default: the model's)."""
        encoded = codec.encode(features, encoding)
        request = self._request(model, outputs)
        tensor = request.inputs.add(name=FEATURES, datatype=codec.PROTOCOL_DATATYPES[encoding], shape=list(encoded.shape))
        if encoding == codec.UINT8:
            quantization = {SCALE: float(encoded.scale), ZERO_POINT: int(encoded.zero_point)}
            set_parameters(tensor.parameters, quantization)
            if model in self.engine_versions:
                set_parameters(request.parameters, quantization)
        request.raw_input_contents.append(encoded.data)
        return request

    def attention_request(self, features: np.ndarray, encoding: str = codec.UINT8, outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
        return self.features_request(ATTENTION_MODEL, features, encoding, outputs)

    def image_request(self, image: bytes | np.ndarray) -> pb.ModelInferRequest:
        """Encoded image bytes (BYTES [1]) or uint8 pixels (H, W, 3) (UINT8 [1, H, W, 3])."""
        request = self._request(CLASSIFIER_MODEL)
        if isinstance(image, (bytes, bytearray)):
            request.inputs.add(name=IMAGE, datatype=DATATYPE_BYTES, shape=[1])
            request.raw_input_contents.append(pack_bytes_elements([bytes(image)]))
        else:
            pixels = np.ascontiguousarray(image, dtype=np.uint8)
            request.inputs.add(name=IMAGE, datatype=DATATYPE_UINT8, shape=[1, *pixels.shape])
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
        """The open ``ModelStreamInfer`` session, a new one if there is none or it broke."""
        with self._stream_lock:
            if self._stream is None or self._stream.broken:
                if self._stream is not None:
                    self._stream.close()
                self._stream = StreamSession(self.stub, self.metadata)
            return self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self.channel.close()


def _expected_outputs(request: pb.ModelInferRequest) -> dict[str, tuple[str | None, list[int] | None]]:
    """Each output the request asked for (in order): its datatype and shape, None where the edge cannot know it."""
    names = tuple(o.name for o in request.outputs) or DEFAULT_OUTPUTS.get(request.model_name, (PROBABILITIES,))
    sent = request.inputs[0]
    batch = int(sent.shape[0])
    expected: dict[str, tuple[str | None, list[int] | None]] = {}
    for name in names:
        if name == FEATURES:
            expected[name] = (sent.datatype, list(sent.shape))
        elif name == SPATIAL_ATTENTION:
            expected[name] = (DATATYPE_UINT8, [batch, 1, *sent.shape[2:]])
        elif name == CHANNEL_ATTENTION:
            expected[name] = (DATATYPE_UINT8, [batch, int(sent.shape[1])])
        else:
            expected[name] = (DATATYPE_FP32, None)
    return expected


def _output_quantization(out: pb.ModelInferResponse.InferOutputTensor, request: pb.ModelInferRequest) -> dict:
    """An output's scale and zero point; an engine that cannot attach parameters to outputs (Triton)
    leaves them out, and then the contract's defaults hold: 1/255 and 0 for the attention, the
    request's own quantization for the attended map."""
    params = read_parameters(out.parameters)
    if SCALE in params or out.datatype != DATATYPE_UINT8:
        return params
    if out.name in (SPATIAL_ATTENTION, CHANNEL_ATTENTION):
        return {SCALE: ATTENTION_SCALE, ZERO_POINT: 0}
    return {**read_parameters(request.parameters), **read_parameters(request.inputs[0].parameters)}


def _decode_output(out: pb.ModelInferResponse.InferOutputTensor, raw: bytes, datatype: str | None, shape: list[int] | None, batch: int, params: dict) -> np.ndarray:
    if out.datatype != datatype or (shape is not None and list(out.shape) != shape):
        raise RemoteError("invalid_response", f"output {out.name!r} is {out.datatype} {list(out.shape)}, expected {datatype} {shape}")
    if shape is None and (len(out.shape) != 2 or out.shape[0] != batch):
        raise RemoteError("invalid_response", f"output {out.name!r} has shape {list(out.shape)}, expected [{batch}, classes]")
    encoding = codec.ENCODING_OF_DATATYPE.get(out.datatype, codec.FP32)
    if out.name in (SPATIAL_ATTENTION, CHANNEL_ATTENTION) and params.get(SCALE) != ATTENTION_SCALE:
        raise RemoteError("invalid_response", f"output {out.name!r} has scale {params.get(SCALE)}, expected 1/255")
    return codec.decode_bytes(raw, out.shape, encoding, params.get(SCALE), params.get(ZERO_POINT))


def _decode_response(request: pb.ModelInferRequest, response: pb.ModelInferResponse, version: str, round_trip: float) -> RemoteCall:
    asked = request.model_version or version  # the fingerprint, or the engine's own version number for it
    if response.model_version and response.model_version != asked:
        raise RemoteError("version_mismatch", f"server answered with version {response.model_version}, edge asked for {asked}")
    fingerprint = read_parameters(response.parameters).get(FINGERPRINT)
    if fingerprint is not None and fingerprint != version:
        raise RemoteError("version_mismatch", f"server answered with weights {fingerprint}, edge holds {version}")
    expected = _expected_outputs(request)
    got = [o.name for o in response.outputs]
    if got != list(expected) or len(response.raw_output_contents) != len(got):
        raise RemoteError("invalid_response", f"expected outputs {list(expected)} with raw contents, got {got} with {len(response.raw_output_contents)} buffers")
    batch = int(request.inputs[0].shape[0])
    try:
        outputs = {
            out.name: _decode_output(out, raw, *expected[out.name], batch, _output_quantization(out, request))
            for out, raw in zip(response.outputs, response.raw_output_contents)
        }
    except codec.CodecError as error:
        raise RemoteError("invalid_response", str(error)) from None
    timings = read_parameters(response.parameters)
    return RemoteCall(
        outputs=outputs,
        round_trip_s=round_trip,
        server_s=timings.get(SERVER_US, 0) / 1e6,
        queue_s=timings.get(QUEUE_US, 0) / 1e6,
        compute_s=timings.get(COMPUTE_US, 0) / 1e6,
        bytes_up=request.ByteSize(),
        bytes_down=response.ByteSize(),
    )


class StreamSession:
    """One ``ModelStreamInfer`` call carrying many requests; answers matched by request id.

    A reader thread drains the response stream. If the stream breaks (server
    killed, connection lost), every waiting request fails at once with
    ``unavailable``; if a request gets no answer within its timeout, the stream
    is presumed silent (a partition, a stopped server): every waiting request
    fails at once with ``timeout`` and the call is cancelled. Either way the
    session is marked broken, so the client opens a new one for the next request
    instead of waiting a full timeout on a dead stream again.
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
        self._outgoing.put(None)  # ends the request iterator, so gRPC's sending thread does not wait forever
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
            failure = RemoteError("timeout", f"no answer within {timeout_s:.3f} s on the stream; it is presumed silent and replaced")
            self._fail_all(failure)
            self._call.cancel()
            raise failure from None
        if reply.error_message:
            code, _ = parse_stream_error(reply.error_message)
            status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
            raise RemoteError(_reason(status, reply.error_message), reply.error_message)
        return reply.infer_response

    def close(self) -> None:
        self._outgoing.put(None)
        self._call.cancel()

