"""The asynchronous server under streams, overload, deadlines and a failing worker, produced for real."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from fer_bench.loopback import start_server
from test_server_errors import features_request

from cloud_server.engine import BatchingSettings
from shared_model.protocol import pb, pb_grpc

REST_REQUEST = features_request(model="fer_rest")
HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")


def _slow_forward(server, seconds: float, model: str = "fer_rest") -> list[int]:
    """Make the model's forward pass take ``seconds`` longer (a slow accelerator); returns the batch sizes it sees.

    fer_rest: it computes in the executor, as on a GPU (fer_attention computes on the event loop).
    """
    batcher = server.engine.batchers[model]
    fast, sizes = batcher.forward, []
    batcher.forward = lambda x: sizes.append(x.shape[0]) or time.sleep(seconds) or fast(x)
    return sizes


def _metric(server, text: str) -> float:
    """A sample's value from the server's /metrics page (0 when absent)."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for line in page.splitlines():
        if line.startswith(text + " "):
            return float(line.split()[-1])
    return 0.0


def test_an_exception_inside_the_forward_is_internal_and_the_server_keeps_serving(trained_model) -> None:
    server = start_server(trained_model)
    batcher = server.engine.batchers["fer_attention"]
    fast = batcher.forward
    batcher.forward = lambda x: (_ for _ in ()).throw(RuntimeError("CUDA error: device-side assert"))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(features_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INTERNAL and "device-side assert" in caught.value.details()
        batcher.forward = fast
        assert stub.ModelInfer(features_request(), timeout=5).outputs[0].name == "features"
    finally:
        channel.close()
        server.stop_now()


def test_overload_is_resource_exhausted_at_once_and_admitted_requests_are_answered(trained_model) -> None:
    server = start_server(trained_model, batching=BatchingSettings(max_batch_size=4, max_queue_delay_ms=1, max_queue_size=4))
    _slow_forward(server, 0.3)

    async def call(stub) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            await stub.ModelInfer(REST_REQUEST, timeout=20)
            return "OK", time.perf_counter() - started
        except grpc.aio.AioRpcError as error:
            return error.code().name, time.perf_counter() - started

    async def burst() -> list[tuple[str, float]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)  # connected before the burst
            return await asyncio.gather(*(call(stub) for _ in range(40)))

    try:
        outcomes = asyncio.run(burst())
    finally:
        server.stop_now()
    refused = [seconds for status, seconds in outcomes if status == "RESOURCE_EXHAUSTED"]
    admitted = [status for status, _ in outcomes if status == "OK"]
    assert len(refused) + len(admitted) == 40, outcomes
    assert refused and admitted
    assert max(refused) < 1.0  # refused without waiting for the busy model (goal 10 ms, CI margin)


def test_work_whose_deadline_passed_is_dropped_before_compute_and_counted(trained_model) -> None:
    server = start_server(trained_model, batching=BatchingSettings(max_batch_size=1, max_queue_delay_ms=0), metrics_port=0, metrics_host="127.0.0.1")
    sizes = _slow_forward(server, 0.4)

    async def call(stub, timeout: float) -> str:
        try:
            await stub.ModelInfer(REST_REQUEST, timeout=timeout)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    async def run() -> list[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            first = asyncio.ensure_future(call(stub, 5))
            await asyncio.sleep(0.1)  # the first now holds the model for 0.4 s
            late = await asyncio.gather(*(call(stub, 0.15) for _ in range(5)))
            return [await first, *late]

    try:
        outcomes = asyncio.run(run())
        time.sleep(0.5)  # the worker reaches the expired requests
        expired = _metric(server, 'fer_expired_requests_total{model="fer_rest"}')
        refused = _metric(server, 'fer_requests_total{model="fer_rest",status="DEADLINE_EXCEEDED"}')
    finally:
        server.stop_now()
    assert outcomes == ["OK"] + ["DEADLINE_EXCEEDED"] * 5
    assert sum(sizes) == 1, f"late requests were computed: {sizes}"
    assert refused == 5 and expired == 5


def test_health_answers_beside_64_open_streams(trained_model) -> None:
    """Streams hold no threads: with 64 busy streams the health service still answers promptly."""
    server = start_server(trained_model, batching=BatchingSettings(max_batch_size=32, max_queue_delay_ms=2))
    address = f"127.0.0.1:{server.port}"

    async def stream(stub, frames: int) -> int:
        async def requests():
            for i in range(frames):
                request = features_request()
                request.id = str(i)
                yield request
                await asyncio.sleep(0.2)  # a 5 fps camera: 320 requests/s in all, within a CI core's capacity

        replies = [reply async for reply in stub.ModelStreamInfer(requests(), timeout=60)]
        assert [r.infer_response.id for r in replies] == [str(i) for i in range(frames)]
        return sum(not r.error_message for r in replies)

    async def health_checks(stop: asyncio.Event) -> list[float]:
        async with grpc.aio.insecure_channel(address) as channel:  # a connection of its own, as a kubelet's
            health = health_pb2_grpc.HealthStub(channel)
            latencies = []
            while not stop.is_set():
                started = time.perf_counter()
                reply = await health.Check(HEALTH_REQUEST, timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            return latencies

    async def run() -> tuple[list[int], list[float]]:
        channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        stop = asyncio.Event()
        checker = asyncio.ensure_future(health_checks(stop))
        answered = await asyncio.gather(*(stream(stubs[i % 8], 10) for i in range(64)))
        stop.set()
        latencies = await checker
        for channel in channels:
            await channel.close()
        return answered, latencies

    try:
        answered, latencies = asyncio.run(run())
    finally:
        server.stop_now()
    assert answered == [10] * 64
    latencies.sort()
    assert len(latencies) >= 5
    assert latencies[int(0.99 * (len(latencies) - 1))] < 1.0, latencies[-5:]  # goal 50 ms p99; generous for CI


def test_unary_and_stream_requests_share_batches(trained_model) -> None:
    server = start_server(trained_model, batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=50))
    _slow_forward(server, 0.3)

    async def run() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            busy = asyncio.ensure_future(stub.ModelInfer(REST_REQUEST, timeout=10))
            await asyncio.sleep(0.1)  # the model is busy: the next two wait in one queue

            async def one_request():
                yield REST_REQUEST

            unary = asyncio.ensure_future(stub.ModelInfer(REST_REQUEST, timeout=10))
            [streamed] = [reply async for reply in stub.ModelStreamInfer(one_request(), timeout=10)]
            await busy
            return (await unary).parameters["batch_size"].int64_param, streamed.infer_response.parameters["batch_size"].int64_param

    try:
        sizes = asyncio.run(run())
    finally:
        server.stop_now()
    assert sizes == (2, 2)


def test_drain_answers_everything_queued_and_then_refuses(trained_model) -> None:
    server = start_server(trained_model, batching=BatchingSettings(max_batch_size=1, max_queue_delay_ms=0))
    _slow_forward(server, 0.1)
    address = f"127.0.0.1:{server.port}"

    async def call(stub) -> str:
        try:
            await stub.ModelInfer(REST_REQUEST, timeout=30)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    async def run() -> tuple[list[str], str]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            calls = [asyncio.ensure_future(call(stub)) for _ in range(6)]
            await asyncio.sleep(0.15)  # all six are in the server: one computing, five queued
            drained = asyncio.get_running_loop().run_in_executor(None, server.drain, 20.0)
            outcomes = await asyncio.gather(*calls)
            await drained
            return outcomes, await call(stub)

    outcomes, after = asyncio.run(run())
    assert outcomes == ["OK"] * 6
    assert after == "UNAVAILABLE"
