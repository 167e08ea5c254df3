"""Assembling the gRPC server: inference service, health, reflection, auth, TLS, limits, drain.

The server is ``grpc.aio``: one event loop (on a thread of its own, so that
:class:`CloudServer` can be driven from ordinary code) serves every call, so
long-lived streams hold no threads and health checks are answered beside any
number of them. Thread model: the event loop (which also computes the light
models); one compute thread per other model (its ThreadBatcher); a small pool
decoding images; the metrics HTTP server.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared_model.protocol import AUTHORIZATION, SERVICE_NAME, bearer_value, pb

from .engine import InferenceEngine
from .service import InferenceServicer, add_inference_service

__all__ = [
    "HEALTH_PREFIX", "KEEPALIVE_PERMIT_OPTIONS", "ServerOptions", "BearerTokenInterceptor", "check_tls_options",
    "is_loopback", "grpc_options", "new_event_loop", "CloudServer",
]

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
T = TypeVar("T")

# Edges send keepalive pings (edge_client.transport) so that a silent link is noticed;
# the server must permit them, or it answers GOAWAY "too_many_pings".
KEEPALIVE_PERMIT_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_pings_without_data", 0),
    # The server pings too, so the streams of an edge that vanished are reaped.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


@dataclass(frozen=True)
class ServerOptions:
    """Where and how the service listens; see ``fer-cloud serve --help`` for each limit."""

    host: str = "0.0.0.0"
    port: int = 8001
    max_concurrent_rpcs: int | None = 4096  # calls (streams count once) beyond this get RESOURCE_EXHAUSTED
    max_message_bytes: int = 64 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate signed by it (mTLS)
    token: str | None = field(default=None, repr=False)  # a secret: never in reprs or logs
    max_connection_age_s: float | None = None  # bounded connections let new replicas receive traffic
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>``; the health service stays open for probes."""

    def __init__(self, token: str) -> None:
        self._expected = bearer_value(token).encode()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get(AUTHORIZATION, "")
        if hmac.compare_digest(str(sent).encode(), self._expected):
            return handler
        return _refusal(handler, "missing or wrong bearer token (send 'authorization: Bearer <token>')")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def check_tls_options(options: ServerOptions) -> None:
    """Refuse a TLS setup that would silently serve something else than asked (raises ValueError)."""
    if bool(options.tls_cert) != bool(options.tls_key):
        raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    if options.tls_client_ca and not options.tls_cert:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key: without them the server would serve plaintext")


def _server_credentials(options: ServerOptions) -> grpc.ServerCredentials | None:
    check_tls_options(options)
    if not options.tls_cert:
        return None
    pair = (Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())  # type: ignore[arg-type]
    client_ca = Path(options.tls_client_ca).read_bytes() if options.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def is_loopback(host: str) -> bool:
    """Is ``host`` reachable only from this machine?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def grpc_options(options: ServerOptions) -> list[tuple[str, Any]]:
    """Channel arguments of the server: message limits, keepalive permits, connection age."""
    result: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.so_reuseport", 0),
        *KEEPALIVE_PERMIT_OPTIONS,
    ]
    if options.max_connection_age_s:
        result += [
            ("grpc.max_connection_age_ms", int(options.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", 5000),
        ]
    return result


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """The server's event loop: ``uvloop`` (less CPU per call than asyncio's own), ``asyncio``, or ``auto`` (uvloop where installed)."""
    if kind not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"unknown event loop {kind!r}; expected auto, uvloop or asyncio")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ValueError("--event-loop uvloop needs uvloop: pip install uvloop") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class CloudServer:
    """A running ``fer-cloud``: start, drain gracefully, wait. Usable from any thread."""

    def __init__(self, engine: InferenceEngine, options: ServerOptions | None = None, event_loop: str = "auto") -> None:
        self.engine = engine
        self.options = options or ServerOptions()
        self._credentials = _server_credentials(self.options)  # TLS mistakes fail here, before anything runs
        self.servicer = InferenceServicer(engine)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._loop = new_event_loop(event_loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        try:
            self.health, self._server = self._call(self._build())
        except BaseException:
            self._close_loop()
            raise

    def _call(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the server's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)  # type: ignore[arg-type]

    async def _build(self) -> tuple[health.aio.HealthServicer, grpc.aio.Server]:
        o = self.options
        server = grpc.aio.server(
            interceptors=[BearerTokenInterceptor(o.token)] if o.token else [],
            options=grpc_options(o),
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        health_servicer = health.aio.HealthServicer()
        add_inference_service(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"{o.host}:{o.port}"
        bound = server.add_secure_port(address, self._credentials) if self._credentials else server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"could not bind {address}")
        self.port = bound
        return health_servicer, server

    async def _start(self) -> None:
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> int:
        """Warm the models up, then start serving; returns the bound gRPC port."""
        self.engine.warm_up()
        self._call(self._start())
        if self.options.metrics_port is not None:
            self.metrics_port = self.engine.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        if self._credentials is None and not is_loopback(self.options.host):
            log.warning(
                "serving WITHOUT TLS on %s: requests%s cross the network in plaintext; use --tls-cert/--tls-key",
                self.options.host, " and the bearer token" if self.options.token else "",
            )
        log.info("serving %s on port %s (model version %s, device %s, runtime %s)", SERVICE_NAME, self.port, self.engine.fingerprint, self.engine.device, self.engine.runtime)
        return self.port  # type: ignore[return-value]

    async def _drain(self, grace: float) -> None:
        self.servicer.start_draining()
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)

    def drain(self, grace: float = 30.0) -> None:
        """Graceful shutdown: report NOT_SERVING, refuse new work, let in-flight requests finish (up to ``grace`` s)."""
        self._shutdown(lambda: self._call(self._drain(grace)), grace)

    def stop_now(self) -> None:
        """Abrupt stop (tests simulate a crash with it): connections are cut, nothing drains."""
        self._shutdown(lambda: self._call(self._server.stop(None)), 1.0)

    def _shutdown(self, stop_grpc: Callable[[], None], grace: float) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            try:
                stop_grpc()
            finally:
                self.engine.close(grace)
                self.engine.metrics.close()
                self._close_loop()
                self._stopped.set()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout``); True once stopped."""
        return self._stopped.wait(timeout)
