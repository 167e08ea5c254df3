"""Fault injection for tests and measuring scripts: a misbehaving inference server and a link that can go silent.

:class:`FaultyServer` is a real gRPC server (``inference.GRPCInferenceService``
and ``grpc.health.v1``) in front of a real ``fer-cloud`` (a
:class:`~cloud_server.server.CloudServer` on loopback, port 0): it relays each
call there and spoils the answer as its current :class:`Fault` says: late,
garbage, wrong-shaped, a stream closed mid-way, or no answer at all.
:class:`BlackholeLink` is a userspace TCP relay on loopback that can stop
forwarding without closing anything, as a partition or a stopped process does
(no reset, no answer).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud_server.engine import BatchingSettings
from cloud_server.inference import MODELS
from cloud_server.server import KEEPALIVE_PERMIT_OPTIONS
from shared_model.protocol import SERVICE_NAME, pb, pb_grpc

from .loopback import start_server

__all__ = ["OK", "SLOW", "GARBAGE", "WRONG_SHAPE", "CLOSE_MID_STREAM", "SILENT", "Fault", "FaultyServicer", "FaultyServer", "BlackholeLink", "wait_until"]

OK = "ok"
SLOW = "slow"  # the right answer, ``delay_s`` late
GARBAGE = "garbage"  # right output names, random bytes of the wrong length
WRONG_SHAPE = "wrong_shape"  # well-formed, but every output one element short in its last dimension
CLOSE_MID_STREAM = "close_mid_stream"  # streams end (UNAVAILABLE) after ``close_after`` answers; unary calls fail
SILENT = "silent"  # requests are read and never answered


@dataclass(frozen=True)
class Fault:
    """How :class:`FaultyServer` spoils its answers."""

    kind: str = OK
    delay_s: float = 0.0
    close_after: int = 3
    metadata_delay_s: float = 0.0  # ModelMetadata answers this late (whatever ``kind``)


def _elements(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _wrong_shape(response: pb.ModelInferResponse) -> pb.ModelInferResponse:
    """Consistent (shape matches bytes) but every output one element short in its last dimension."""
    spoiled = pb.ModelInferResponse()
    spoiled.CopyFrom(response)
    del spoiled.raw_output_contents[:]
    for output, raw in zip(spoiled.outputs, response.raw_output_contents):
        shape = [int(d) for d in output.shape]
        item = len(raw) // _elements(shape)
        shorter = [*shape[:-1], shape[-1] - 1]
        del output.shape[:]
        output.shape.extend(shorter)
        spoiled.raw_output_contents.append(raw[: _elements(shorter) * item])
    return spoiled


def _garbage(response: pb.ModelInferResponse) -> pb.ModelInferResponse:
    spoiled = pb.ModelInferResponse()
    spoiled.CopyFrom(response)
    del spoiled.raw_output_contents[:]
    for raw in response.raw_output_contents:
        spoiled.raw_output_contents.append(os.urandom(max(1, len(raw) // 3)))
    return spoiled


class FaultyServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Relays metadata from ``upstream`` (a real fer-cloud) as it is, and inference as ``fault`` says (change ``fault`` at any time)."""

    def __init__(self, upstream: pb_grpc.GRPCInferenceServiceStub, fault: Fault) -> None:
        self.upstream = upstream
        self.fault = fault
        self.requests = 0  # inference requests received (unary and stream)
        self.streams = 0  # ModelStreamInfer calls opened
        self.in_progress = 0  # inference requests being answered now
        self.most_in_progress = 0  # the most ever answered at once
        self.stopping = threading.Event()
        self._count_lock = threading.Lock()

    def _count(self, streams: int = 0) -> None:
        with self._count_lock:
            self.requests += 1 - streams
            self.streams += streams

    def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name in MODELS)

    def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        self.stopping.wait(self.fault.metadata_delay_s)
        return _relayed(lambda: self.upstream.ModelMetadata(request, timeout=30), context)

    def _wait_silently(self, context: grpc.ServicerContext) -> None:
        while context.is_active() and not self.stopping.wait(0.05):
            pass

    def _answer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse | None:
        """The spoiled answer to ``request``; None for no answer."""
        with self._count_lock:
            self.in_progress += 1
            self.most_in_progress = max(self.most_in_progress, self.in_progress)
        try:
            return self._spoiled(request, context)
        finally:
            with self._count_lock:
                self.in_progress -= 1

    def _spoiled(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse | None:
        fault = self.fault
        if fault.kind == SILENT:
            return None
        response = _relayed(lambda: self.upstream.ModelInfer(request, timeout=30), context)
        if fault.kind == SLOW:
            self.stopping.wait(fault.delay_s)
        if fault.kind == GARBAGE:
            return _garbage(response)
        if fault.kind == WRONG_SHAPE:
            return _wrong_shape(response)
        return response

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        self._count()
        if self.fault.kind == CLOSE_MID_STREAM:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fault: connection closed")
        response = self._answer(request, context)
        if response is None:
            self._wait_silently(context)
            context.abort(grpc.StatusCode.UNAVAILABLE, "fault: never answered")
        return response

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext) -> Iterator[pb.ModelStreamInferResponse]:
        self._count(streams=1)
        answered = 0
        for request in request_iterator:
            self._count()
            if self.fault.kind == CLOSE_MID_STREAM and answered >= self.fault.close_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "fault: stream closed mid-way")
            response = self._answer(request, context)
            if response is not None:
                answered += 1
                yield pb.ModelStreamInferResponse(infer_response=response)


def _relayed(call, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
    """``call()``'s answer from the real server; a refusal is relayed with its status."""
    try:
        return call()
    except grpc.RpcError as error:
        context.abort(error.code(), error.details())


class FaultyServer:
    """A real gRPC server on loopback, in front of a real fer-cloud, that misbehaves as told; ``.port``, ``.fault``, ``.stop()``.

    ``model``: a FERNet whose weights have an ONNX export (the shipped ones): the fer-cloud behind serves
    them with ONNX Runtime, which starts in a fraction of PyTorch's warm-up.
    """

    def __init__(self, model, fault: Fault | None = None, port: int = 0) -> None:
        self.cloud = start_server(model, batching=BatchingSettings(max_batch_size=1, max_queue_delay_ms=0), runtime="onnx")
        self._upstream = grpc.insecure_channel(f"127.0.0.1:{self.cloud.port}")
        grpc.channel_ready_future(self._upstream).result(timeout=30)  # connected now, not by the first relayed call
        self.servicer = FaultyServicer(pb_grpc.GRPCInferenceServiceStub(self._upstream), fault or Fault())
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=KEEPALIVE_PERMIT_OPTIONS)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self._server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    @property
    def fault(self) -> Fault:
        return self.servicer.fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        self.servicer.fault = fault

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.servicer.stopping.set()
        self._server.stop(None).wait()
        self._upstream.close()
        self.cloud.stop_now()


class BlackholeLink:
    """A TCP relay 127.0.0.1:``port`` -> ``upstream``; :meth:`blackhole` stops forwarding, closing nothing.

    While blackholed, bytes stay unread in the kernel's buffers (both ways) and
    new connections are accepted but carry nothing, as across a partition;
    :meth:`restore` lets everything flow again on the same connections.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open and silent."""
        self._forwarding.clear()

    def restore(self) -> None:
        """Forward again (what was held back flows on)."""
        self._forwarding.set()

    def close(self) -> None:
        self._closed.set()
        self._forwarding.set()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), name="link-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                if not self._forwarding.wait(0.05):
                    continue  # blackholed: read nothing, so nothing moves and nothing closes
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready or not self._forwarding.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: the socket was closed under select (link.close())
            return


def wait_until(condition, timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval_s)
    return bool(value)
