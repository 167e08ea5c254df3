"""Server load: throughput and latency of ``fer_attention`` across concurrency, with and without batching.

A ``fer-cloud`` process runs on loopback; closed-loop clients (one thread and
one channel each) send uint8 split tensors back to back for a fixed time.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from shared_model.protocol import (
    ATTENTION_MODEL,
    FEATURES,
    SCALE,
    ZERO_POINT,
    pb,
    pb_grpc,
    set_parameters,
)

from .network import percentile
from .processes import cloud_command, stop_process, wait_ready


@dataclass
class LoadRecord:
    batching: bool
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch_size: float


def attention_request(shape: tuple[int, ...] = (1, 8, 28, 28)) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=ATTENTION_MODEL)
    tensor = request.inputs.add(name=FEATURES, datatype="UINT8", shape=list(shape))
    set_parameters(tensor.parameters, {SCALE: 0.05, ZERO_POINT: 128})
    request.raw_input_contents.append(np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8).tobytes())
    return request


def closed_loop(target: str, concurrency: int, seconds: float, batching: bool) -> LoadRecord:
    request = attention_request()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    batch_sizes: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    warmed = threading.Barrier(concurrency + 1)
    go = threading.Event()
    deadline = [0.0]

    def client(i: int) -> None:
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, timeout=30)  # connect and warm up outside the window
        warmed.wait()
        go.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            try:
                response = stub.ModelInfer(request, timeout=30)
            except grpc.RpcError:
                errors[i] += 1
                continue
            latencies[i].append((time.perf_counter() - began) * 1000)
            batch_sizes[i].append(response.parameters["batch_size"].int64_param)
        channel.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    warmed.wait()
    began = time.perf_counter()
    deadline[0] = began + seconds
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    sizes = [x for per in batch_sizes for x in per]
    return LoadRecord(
        batching=batching, concurrency=concurrency, requests=len(flat), errors=sum(errors), seconds=elapsed,
        throughput_rps=len(flat) / elapsed, p50_ms=statistics.median(flat) if flat else float("nan"),
        p90_ms=percentile(flat, 0.9) if flat else float("nan"), p99_ms=percentile(flat, 0.99) if flat else float("nan"),
        mean_batch_size=statistics.fmean(sizes) if sizes else float("nan"),
    )


def server_sweep(
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    seconds: float = 3.0,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2.0,
    server_threads: int = 1,
    weights: str | None = None,
    progress: bool = True,
) -> list[LoadRecord]:
    import subprocess

    from tqdm import tqdm

    records = []
    bar = tqdm(total=2 * len(concurrencies), desc="server sweep", unit="point", disable=not progress, file=sys.stderr)
    for batching in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            ready = Path(tmp) / "ready.json"
            command = cloud_command("127.0.0.1", ready, server_threads, weights)
            command += ["--max-batch-size", str(max_batch_size if batching else 1), "--max-queue-delay-ms", str(max_queue_delay_ms if batching else 0)]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            try:
                target = f"127.0.0.1:{wait_ready(process, ready)}"
                for concurrency in concurrencies:
                    records.append(closed_loop(target, concurrency, seconds, batching))
                    bar.update(1)
            finally:
                stop_process(process)
    bar.close()
    return records


def format_table(records: list[LoadRecord]) -> str:
    lines = [f"{'batching':<9}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'batch':>7}{'errors':>8}"]
    for r in records:
        lines.append(f"{'on' if r.batching else 'off':<9}{r.concurrency:>8}{r.throughput_rps:>9.0f}{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{r.mean_batch_size:>7.2f}{r.errors:>8}")
    return "\n".join(lines)


def plot(records: list[LoadRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for batching, style in ((True, "-"), (False, "--")):
        rows = sorted((r for r in records if r.batching == batching), key=lambda r: r.concurrency)
        label = "batching on" if batching else "batching off"
        xs = [r.concurrency for r in rows]
        left.plot(xs, [r.throughput_rps for r in rows], style, marker="o", label=label)
        right.plot(xs, [r.p50_ms for r in rows], style, marker="o", label=f"p50, {label}")
        right.plot(xs, [r.p99_ms for r in rows], style, marker="x", label=f"p99, {label}")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title="fer_attention throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="fer_attention latency")
    for axis in (left, right):
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def record_dicts(records: list[LoadRecord]) -> list[dict]:
    return [asdict(r) for r in records]
