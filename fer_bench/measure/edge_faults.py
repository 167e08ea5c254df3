"""Measure the edge under faults (the figures of docs/server_faults.md); not a test.

Scenarios, each produced for real on loopback: a slow server (answers after 10x
the deadline), a blackholed link mid-stream (and back), an overloaded server
(queue full). Prints one JSON line per scenario.

    .venv/bin/python -m fer_bench.measure.edge_faults
    .venv/bin/python -m fer_bench.measure.edge_faults overload     # one scenario (slow, blackhole, overload)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cloud_server.engine import BatchingSettings
from edge_client.breaker import CircuitBreaker
from edge_client.runner import EdgeRunner
from edge_client.transport import CloudClient
from fer_bench.fault_injection import SLOW, BlackholeLink, Fault, FaultyServer
from fer_bench.loopback import attention_off_the_loop, start_server
from shared_model.checkpoint import load_model, model_fingerprint
from shared_model.protocol import ATTENTION_MODEL, DATATYPE_FP32

__all__ = ["slow_server", "blackhole", "overload_server", "overload", "main"]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 0.2


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {"p50": round(float(np.median(array)), 1), "max": round(float(array.max()), 1), "n": len(values)}


def _waited(latency: dict) -> float:
    return latency["total"] - latency["head"] - latency["encode"] - latency["attention"] - latency["tail"]


def slow_server(model, face: np.ndarray, use_stream: bool) -> dict:
    server = FaultyServer(model, Fault(SLOW, delay_s=10 * TIMEOUT_S))
    client = CloudClient(server.address, model_fingerprint(model), timeout_s=TIMEOUT_S)
    runner = EdgeRunner(model, "split", client, CircuitBreaker(failure_threshold=10**6), timeout_s=TIMEOUT_S, use_stream=use_stream)
    try:
        results = [runner.classify(face) for _ in range(20)]
    finally:
        runner.close()
        server.stop()
    latencies = [asdict(r.latency) for r in results]
    return {
        "scenario": f"slow server ({'stream' if use_stream else 'unary'}), timeout {TIMEOUT_S * 1000:.0f} ms, answer after {10 * TIMEOUT_S * 1000:.0f} ms",
        "reasons": sorted({r.fallback_reason for r in results}),
        "total_ms": _summary([r["total"] for r in latencies]),
        "waited_ms": _summary([_waited(r) for r in latencies]),
    }


def blackhole(model, face: np.ndarray, silent_s: float = 2.0) -> dict:
    server = start_server(model)
    link = BlackholeLink(server.port)
    client = CloudClient(link.address, model_fingerprint(model), timeout_s=TIMEOUT_S)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=0.2, probe=lambda: client.healthy(TIMEOUT_S))
    runner = EdgeRunner(model, "split", client, breaker, timeout_s=TIMEOUT_S, use_stream=True)
    records: list[tuple[str, float, object]] = []
    try:
        for phase, seconds in (("before", 1.0), ("silent", silent_s), ("after", 4.0)):
            if phase == "silent":
                link.blackhole()
            if phase == "after":
                link.restore()
            phase_start = time.monotonic()
            while time.monotonic() - phase_start < seconds:
                records.append((phase, time.monotonic() - phase_start, runner.classify(face)))
                time.sleep(0.03)
    finally:
        runner.close()
        link.close()
        server.stop_now()
    silent = [r for phase, _, r in records if phase == "silent"]
    back = [t for phase, t, r in records if phase == "after" and not r.fallback]
    return {
        "scenario": f"blackholed link mid-stream for {silent_s:.0f} s, timeout {TIMEOUT_S * 1000:.0f} ms",
        "frames": len(records),
        "silent_reasons": sorted({r.fallback_reason for r in silent}),
        "silent_total_ms": _summary([r.latency.total for r in silent]),
        "silent_waited_ms": _summary([_waited(asdict(r.latency)) for r in silent]),
        "back_on_cloud_after_s": round(back[0], 3) if back else None,
    }


OVERLOAD_DELAY_S = 0.05  # the model of the overloaded server: a busy accelerator, 20 requests/s


def overload_server(ready: Path) -> None:
    """The overloaded server, in a process of its own (as deployed: its event loop shares no GIL with the edges)."""
    model, _ = load_model()
    server = start_server(attention_off_the_loop(model), batching=BatchingSettings(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2))
    batcher = server.engine.batchers[ATTENTION_MODEL]
    fast = batcher.forward
    batcher.forward = lambda x: time.sleep(OVERLOAD_DELAY_S) or fast(x)
    ready.write_text(str(server.port))
    server.wait()


def _start_overload_server(folder: Path) -> tuple[subprocess.Popen, int]:
    ready = folder / "port"
    process = subprocess.Popen([sys.executable, "-m", "fer_bench.measure.edge_faults", "--overload-server", str(ready)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the overload server did not start")
        time.sleep(0.05)
    return process, int(ready.read_text())


def overload(model, face: np.ndarray) -> dict:
    """12 edges (threads of this process, each also computing its head) and then 12 plain gRPC
    clients (threads doing nothing else) against a queue of 2 in front of a 50 ms model."""
    import tempfile

    import grpc

    from shared_model.protocol import pb, pb_grpc

    with tempfile.TemporaryDirectory() as tmp:
        process, port = _start_overload_server(Path(tmp))
        try:
            results: list = []
            lock = threading.Lock()

            def edge() -> None:
                client = CloudClient(f"127.0.0.1:{port}", model_fingerprint(model), timeout_s=2.0)
                runner = EdgeRunner(model, "split", client, CircuitBreaker(failure_threshold=10**6), timeout_s=2.0)
                for _ in range(10):
                    result = runner.classify(face)
                    with lock:
                        results.append(result)
                runner.close()

            _run_threads(edge, 12)
            request = pb.ModelInferRequest(model_name=ATTENTION_MODEL)
            request.inputs.add(name="features", datatype=DATATYPE_FP32, shape=[1, 8, 28, 28])
            request.raw_input_contents.append(np.zeros((1, 8, 28, 28), np.float32).tobytes())
            plain: list[tuple[str, float]] = []

            def plain_client() -> None:
                channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                stub.ServerLive(pb.ServerLiveRequest(), timeout=10)  # connected before timing
                for _ in range(20):
                    began = time.perf_counter()
                    try:
                        stub.ModelInfer(request, timeout=10)
                        code = "OK"
                    except grpc.RpcError as error:
                        code = error.code().name
                    with lock:
                        plain.append((code, (time.perf_counter() - began) * 1000))
                channel.close()

            _run_threads(plain_client, 12)
        finally:
            process.terminate()
            process.wait(30)
    refused = [r for r in results if r.fallback_reason == "overloaded"]
    admitted = [r for r in results if not r.fallback]
    plain_refused = [ms for code, ms in plain if code == "RESOURCE_EXHAUSTED"]
    return {
        "scenario": "overload: a queue of 2 in front of a 50 ms model (server in its own process); 12 edges, then 12 plain gRPC clients",
        "answers": len(results),
        "reasons": sorted({str(r.fallback_reason) for r in results}),
        "refused": len(refused),
        "refused_waited_ms": _summary([_waited(asdict(r.latency)) for r in refused]) if refused else None,
        "admitted_total_ms": _summary([r.latency.total for r in admitted]) if admitted else None,
        "plain_calls": len(plain),
        "plain_codes": sorted({code for code, _ in plain}),
        "plain_refused": len(plain_refused),
        "plain_refused_ms": _summary(plain_refused) if plain_refused else None,
        "plain_admitted_ms": _summary([ms for code, ms in plain if code == "OK"]) if len(plain_refused) < len(plain) else None,
    }


def _run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--overload-server":
        overload_server(Path(sys.argv[2]))
        return
    only = sys.argv[1:]  # scenario names to run (slow, blackhole, overload); all by default
    import cv2

    from shared_model.preprocessing import prepare_face

    model, _ = load_model()
    face = prepare_face(cv2.imread(str(ROOT / "tests" / "data" / "faces" / "astronaut.png"), cv2.IMREAD_GRAYSCALE), model.config.input_size)
    scenarios = {
        "slow": [lambda: slow_server(model, face, False), lambda: slow_server(model, face, True)],
        "blackhole": [lambda: blackhole(model, face)],
        "overload": [lambda: overload(model, face)],
    }
    for name, measures in scenarios.items():
        if only and name not in only:
            continue
        for measure in measures:
            print(json.dumps(measure()), flush=True)


if __name__ == "__main__":
    main()
