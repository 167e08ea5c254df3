"""Assembling the gRPC server: inference service, health, reflection, auth, TLS, limits, drain."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared_model.protocol import SERVICE_NAME, pb

from .engine import InferenceEngine
from .service import InferenceServicer

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class ServerOptions:
    host: str = "0.0.0.0"
    port: int = 8001
    workers: int = 32
    max_concurrent_rpcs: int = 256
    max_message_bytes: int = 64 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate signed by it (mTLS)
    token: str | None = None
    max_connection_age_s: float | None = None  # bounded connections let new replicas receive traffic
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>``; the health service stays open for probes."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return handler
        return _refusal(handler, "missing or wrong bearer token (send 'authorization: Bearer <token>')")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def _server_credentials(options: ServerOptions) -> grpc.ServerCredentials | None:
    if not options.tls_cert and not options.tls_key:
        return None
    if not (options.tls_cert and options.tls_key):
        raise ValueError("TLS needs both a certificate and a key")
    pair = (Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())
    client_ca = Path(options.tls_client_ca).read_bytes() if options.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


class CloudServer:
    """A running ``fer-cloud``: start, drain gracefully, wait."""

    def __init__(self, engine: InferenceEngine, options: ServerOptions | None = None) -> None:
        self.engine = engine
        self.options = options or ServerOptions()
        self.servicer = InferenceServicer(engine)
        self.health = health.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._server = self._build()

    def _build(self) -> grpc.Server:
        o = self.options
        grpc_options = [
            ("grpc.max_receive_message_length", o.max_message_bytes),
            ("grpc.max_send_message_length", o.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if o.max_connection_age_s:
            grpc_options += [
                ("grpc.max_connection_age_ms", int(o.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", 5000),
            ]
        interceptors = [BearerTokenInterceptor(o.token)] if o.token else []
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=o.workers, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=grpc_options,
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        from shared_model.protocol import pb_grpc

        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"{o.host}:{o.port}"
        credentials = _server_credentials(o)
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"could not bind {address}")
        self.port = bound
        return server

    def start(self) -> int:
        """Start serving; returns the bound gRPC port."""
        self._server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.options.metrics_port is not None:
            self.metrics_port = self.engine.metrics.serve(self.options.metrics_port, self.options.metrics_host)
        log.info("serving %s on port %s (model version %s, device %s)", SERVICE_NAME, self.port, self.engine.fingerprint, self.engine.device)
        return self.port  # type: ignore[return-value]

    def drain(self, grace: float = 30.0) -> None:
        """Graceful shutdown: report NOT_SERVING, refuse new work, let in-flight requests finish."""
        if self._stopped.is_set():
            return
        self.servicer.start_draining()
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.engine.close()
        self.engine.metrics.close()
        self._stopped.set()

    def stop_now(self) -> None:
        """Abrupt stop (tests simulate a crash with it): connections are cut, nothing drains."""
        self._server.stop(None).wait()
        self.engine.close()
        self.engine.metrics.close()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
