"""Measure: many ModelStreamInfer streams and unary clients against fer-cloud, with health checks beside them.

Not a test (figures come from measurements, not from timed unit tests): starts
``fer-cloud serve`` as a process of its own, opens ``--streams`` streams (each
sending frames at ``--fps``) and ``--unary`` closed-loop unary clients, checks
grpc.health every 100 ms on a connection of its own, and prints one JSON line:
errors, health-check latency percentiles, request latency percentiles,
throughput and the server's resident memory at the start and the end.

    .venv/bin/python -m fer_bench.measure.streams --streams 256 --unary 64 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared_model.protocol import ATTENTION_MODEL, DATATYPE_UINT8, SCALE, SERVICE_NAME, ZERO_POINT, pb, pb_grpc, set_parameters

__all__ = ["Load", "main"]


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=ATTENTION_MODEL)
    tensor = request.inputs.add(name="features", datatype=DATATYPE_UINT8, shape=[1, 8, 28, 28])
    set_parameters(tensor.parameters, {SCALE: 0.05, ZERO_POINT: 128})
    request.raw_input_contents.append(np.random.default_rng(0).integers(0, 256, 8 * 28 * 28, dtype=np.uint8).tobytes())
    return request


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(array, q)), 2) for q in (50, 90, 99)} | {"max": round(float(array.max()), 2), "n": len(values)}


class Load:
    def __init__(self, address: str, seconds: float, fps: float) -> None:
        self.address, self.seconds, self.fps = address, seconds, fps
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.health: list[float] = []
        self.rss: list[float] = []

    async def stream(self, stub, index: int, stop: float) -> None:
        template = _request()
        sent: dict[str, float] = {}

        async def requests():
            frame = 0
            while time.monotonic() < stop:
                request = pb.ModelInferRequest()
                request.CopyFrom(template)
                request.id = f"{index}-{frame}"
                sent[request.id] = time.perf_counter()
                yield request
                frame += 1
                await asyncio.sleep(1 / self.fps)

        try:
            async for reply in stub.ModelStreamInfer(requests(), timeout=self.seconds + 60):
                if reply.error_message:
                    self.errors.append(reply.error_message[:80])
                self.latencies.append(time.perf_counter() - sent.pop(reply.infer_response.id))
        except grpc.aio.AioRpcError as error:
            self.errors.append(f"stream {error.code().name}")

    async def unary(self, stub, stop: float) -> None:
        request = _request()
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=10)
                self.latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as error:
                self.errors.append(f"unary {error.code().name}")

    async def sample_rss(self, stop: float, pid: int) -> None:
        while time.monotonic() < stop:
            self.rss.append(_rss_mib(pid))
            await asyncio.sleep(0.5)

    async def run(self, streams: int, unary: int, pid: int, connections: int) -> None:
        channels = [grpc.aio.insecure_channel(self.address) for _ in range(connections)]
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        await asyncio.gather(*(s.ServerLive(pb.ServerLiveRequest(), timeout=10) for s in stubs))
        stop = time.monotonic() + self.seconds
        await asyncio.gather(
            self.sample_rss(stop, pid),
            *(self.stream(stubs[i % connections], i, stop) for i in range(streams)),
            *(self.unary(stubs[i % connections], stop) for i in range(unary)),
        )
        for channel in channels:
            await channel.close()


def _health_checks(address: str, seconds: float, results: "multiprocessing.Queue") -> None:
    """In a process of its own, as a kubelet: grpc.health Check every 100 ms; puts (latencies, errors)."""
    latencies, errors = [], []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        began = time.monotonic()
        stop = began + seconds
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
                latencies.append((time.monotonic() - began, time.perf_counter() - started))
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    errors.append("health NOT_SERVING")
            except grpc.RpcError as error:
                errors.append(f"health {error.code().name}")
            time.sleep(0.1)
    results.put((latencies, errors))


def _start_server(threads: int, cpus: str = "", cwd: Path | None = None) -> tuple[subprocess.Popen, int]:
    ready = Path(tempfile.mkdtemp()) / "ready.json"
    command = [sys.executable, "-m", "cloud_server.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--threads", str(threads), "--log-level", "WARNING"]
    cwd = cwd or Path(__file__).resolve().parents[2]
    pinned = ["taskset", "-c", cpus] if cpus else []
    process = subprocess.Popen(pinned + command, stdout=subprocess.DEVNULL, cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd)})
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("fer-cloud did not start")
        time.sleep(0.1)
    return process, json.loads(ready.read_text())["port"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--unary", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second each stream sends")
    parser.add_argument("--connections", type=int, default=16, help="TCP connections the clients share")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--server-cpu", default="", help="taskset CPU list of the server (e.g. 0)")
    parser.add_argument("--client-cpu", default="", help="CPU list of the clients and the health checker (e.g. 1)")
    parser.add_argument("--server-cwd", type=Path, help="another checkout whose fer-cloud to measure (its cloud_server on PYTHONPATH)")
    args = parser.parse_args()
    process, port = _start_server(args.server_threads, args.server_cpu, args.server_cwd)
    if args.client_cpu:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    try:
        load = Load(f"127.0.0.1:{port}", args.seconds, args.fps)
        rss_start = _rss_mib(process.pid)
        spawn = multiprocessing.get_context("spawn")
        results = spawn.Queue()
        checker = spawn.Process(target=_health_checks, args=(load.address, args.seconds, results))
        checker.start()
        asyncio.run(load.run(args.streams, args.unary, process.pid, args.connections))
        rss_end = _rss_mib(process.pid)
        health_samples, health_errors = results.get(timeout=60)
        load.health = [latency for _, latency in health_samples]
        load.errors += health_errors
        checker.join(10)
    finally:
        process.terminate()
        process.wait(30)
    print(json.dumps({
        "streams": args.streams, "unary_clients": args.unary, "seconds": args.seconds, "fps_per_stream": args.fps,
        "requests": len(load.latencies), "throughput_rps": round(len(load.latencies) / args.seconds, 1),
        "errors": len(load.errors), "error_kinds": sorted(set(load.errors))[:10],
        "health_ms": _percentiles(load.health), "request_ms": _percentiles(load.latencies),
        "health_p99_ms_per_10s": [
            _percentiles([latency for at, latency in health_samples if start <= at < start + 10]).get("p99")
            for start in range(0, int(args.seconds), 10)
        ],
        "server_rss_mib_per_10s": [round(x, 1) for x in load.rss[::20]],
        "server_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1), "max": round(max(load.rss, default=rss_end), 1)},
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
