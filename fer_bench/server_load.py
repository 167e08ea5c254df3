"""Server load: ``fer-cloud`` and Triton Inference Server side by side on the same closed-loop client.

Three engines (:data:`TARGETS`), each serving ``fer_attention`` (or ``fer_rest``: ``--model``):

- ``fer-cloud``, this project's server;
- ``triton-minimal``, the reference: Triton serving the leanest model for the
  same work (``deploy/triton/minimal_model.py``: a batch's FP32 inputs
  concatenated, the stage's ONNX export run with one ONNX Runtime thread, one
  instance, dynamic batching; FP32 only);
- ``triton-full``, Triton serving the project's full model
  (``deploy/triton/model.py``: quantization parameters, UINT8, requested outputs).

Two floors (:data:`FLOORS`), named only when asked for, show what Python's gRPC
costs before any inference: a server answering a prebuilt ``fer_attention``
response (``fer_bench/measure/grpc_floor_server.py``), on grpc.aio as fer-cloud
serves (``grpc-floor-aio``) or on grpcio's thread-pool server
(``grpc-floor-sync``). No Python front end of fer-cloud can cost less per request.

Each engine runs on loopback, pinned with ``taskset`` to
its own core (``--server-cpu``) with one compute thread; the client runs as a
separate process pinned to another core (``--client-cpu``): tritonclient, from
its own virtual environment (``.venv-tritonclient``; ``FER_TRITON_PYTHON``
names another), with one ``InferenceServerClient`` and so one TCP connection
per closed-loop client, each sending the same request back to back (FP32
``[1, 8, 28, 28]`` by default, or UINT8 with request-level ``scale`` and
``zero_point``, which both engines accept). Per point: throughput, p50/p90/p99
latency, the server's CPU time per request (user + system of all its
processes over the window, from /proc: it hardly depends on what else runs on
the machine) and its resident memory (all its processes: Triton's backend
stubs included).

The engines run during the whole sweep (each first loaded for
``--warmup-seconds``, unrecorded) and take turns round by round: in each round
(a concurrency level, a repeat) every engine is measured once, the first of
them rotating from round to round, so that a drift of the machine's speed hits
all alike; ``--repeats`` measures every point several times to show the spread.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import warnings
from contextlib import ExitStack
import dataclasses
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from shared_model.protocol import ATTENTION_MODEL, BATCH_SIZE, DATATYPE_FP32, DATATYPE_UINT8, FEATURES, PROBABILITIES, REST_MODEL, SCALE, ZERO_POINT

from .processes import cloud_command, stop_process, wait_ready
from .triton_server import group_pids

if TYPE_CHECKING:
    from shared_model.checkpoint import Checkpoint
    from shared_model.network import FERNet
    from shared_model.training.export import TritonSettings

__all__ = [
    "FER_CLOUD", "TRITON_MINIMAL", "TRITON_FULL", "TARGETS", "GRPC_FLOOR_AIO", "GRPC_FLOOR_SYNC", "FLOORS", "REFERENCE", "DESCRIPTIONS", "MODELS", "DATATYPES", "LoadRecord", "LoadSettings",
    "CLIENT", "client_python", "memory_mib", "RunningServer", "minimal_repository", "STARTERS", "measure", "server_sweep",
    "summary", "format_table", "format_comparison", "legend", "plot", "record_dicts",
]

ROOT = Path(__file__).resolve().parents[1]
FER_CLOUD = "fer-cloud"
TRITON_MINIMAL = "triton-minimal"
TRITON_FULL = "triton-full"
TARGETS = (FER_CLOUD, TRITON_MINIMAL, TRITON_FULL)
GRPC_FLOOR_AIO = "grpc-floor-aio"
GRPC_FLOOR_SYNC = "grpc-floor-sync"
FLOORS = (GRPC_FLOOR_AIO, GRPC_FLOOR_SYNC)  # FP32 fer_attention only; batching does not apply
REFERENCE = TRITON_MINIMAL  # what fer-cloud is compared with
DESCRIPTIONS = {
    FER_CLOUD: "this project's server",
    TRITON_MINIMAL: "the reference: Triton, deploy/triton/minimal_model.py (FP32 batch in, the ONNX export run, nothing else)",
    TRITON_FULL: "Triton, the project's full model deploy/triton/model.py (parameters, UINT8, requested outputs)",
    GRPC_FLOOR_AIO: "no inference: a prebuilt answer from grpc.aio, fer-cloud's front end (Python gRPC's own cost)",
    GRPC_FLOOR_SYNC: "no inference: a prebuilt answer from grpcio's thread-pool server",
}
MODELS = (ATTENTION_MODEL, REST_MODEL)  # both take the split tensor: the attention stage alone, or everything after the head
DATATYPES = (DATATYPE_FP32, DATATYPE_UINT8)


@dataclass
class LoadRecord:
    target: str
    batching: bool
    concurrency: int
    repeat: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch_size: float  # from the responses' batch_size parameter (fer-cloud); NaN where the engine does not say
    server_cpu_us_per_request: float
    server_rss_mib: float  # resident memory after the point, all the engine's processes
    server_peak_rss_mib: float  # the most each process held since it started, summed
    datatype: str
    model: str = ATTENTION_MODEL


@dataclass(frozen=True)
class LoadSettings:
    targets: tuple[str, ...] = TARGETS
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    seconds: float = 3.0
    warmup_seconds: float = 2.0  # per engine after its start, not recorded
    batching: tuple[bool, ...] = (True, False)
    repeats: int = 1
    datatype: str = DATATYPE_FP32
    max_batch_size: int = 32
    max_queue_delay_ms: float = 6.0  # fer-cloud's default: waits only while other requests are queued
    triton_queue_delay_us: int = 0  # Triton: holds even a lone request for the whole delay
    server_threads: int = 1
    server_cpu: str = "0"
    client_cpu: str = "1"
    weights: str | None = None
    device: str = "cpu"  # cpu or cuda: fer-cloud's --device, Triton's instance kind (KIND_GPU for cuda)
    model: str = ATTENTION_MODEL  # one of MODELS


# The closed-loop client: one process, one tritonclient (one channel, one TCP connection) per client thread.
CLIENT = r'''
import json, os, sys, threading, time
import numpy as np
import tritonclient.grpc as grpcclient

target, model, datatype, clients, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
pids = [int(p) for p in sys.argv[6].split(",")]
input_name, scale_key, zero_key, batch_key = sys.argv[7:11]
ticks = os.sysconf("SC_CLK_TCK")

def server_cpu():
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / ticks

rng = np.random.default_rng(0)
if datatype == "UINT8":
    features = rng.integers(0, 256, size=(1, 8, 28, 28), dtype=np.uint8)
    parameters = {scale_key: 0.05, zero_key: 128}
else:
    features = rng.standard_normal((1, 8, 28, 28)).astype(np.float32)
    parameters = None

def caller():
    client = grpcclient.InferenceServerClient(url=target, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    tensor = grpcclient.InferInput(input_name, list(features.shape), datatype)
    tensor.set_data_from_numpy(features)
    return lambda: client.infer(model, [tensor], parameters=parameters, client_timeout=30)

latencies = [[] for _ in range(clients)]
batches = [[] for _ in range(clients)]
errors = [0] * clients
state = {"measuring": False, "stop": False}
ready = threading.Barrier(clients + 1)

def run(i):
    call = caller()
    for _ in range(5):
        call()  # connect and warm up outside the window
    ready.wait()
    while not state["stop"]:
        began = time.perf_counter()
        try:
            result = call()
        except Exception:
            errors[i] += state["measuring"]
            continue
        if state["measuring"]:
            latencies[i].append(time.perf_counter() - began)
            size = result.get_response().parameters.get(batch_key)
            if size is not None:
                batches[i].append(size.int64_param)

threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
for t in threads:
    t.start()
ready.wait()
time.sleep(min(0.5, seconds / 4))  # steady state before the window opens
cpu0, began = server_cpu(), time.perf_counter()
state["measuring"] = True
time.sleep(seconds)
state["measuring"] = False
cpu1, elapsed = server_cpu(), time.perf_counter() - began
state["stop"] = True
for t in threads:
    t.join(30)
flat = np.sort(np.concatenate([np.asarray(x, dtype=float) for x in latencies])) * 1000
sizes = [s for per in batches for s in per]
nan = float("nan")
print(json.dumps({
    "requests": int(flat.size), "errors": sum(errors), "seconds": elapsed,
    "p50_ms": float(np.percentile(flat, 50)) if flat.size else nan,
    "p90_ms": float(np.percentile(flat, 90)) if flat.size else nan,
    "p99_ms": float(np.percentile(flat, 99)) if flat.size else nan,
    "mean_batch_size": float(np.mean(sizes)) if sizes else nan,
    "server_cpu_s": cpu1 - cpu0,
}))
'''


def client_python() -> str:
    """The Python with tritonclient: ``$FER_TRITON_PYTHON``, else ``.venv-tritonclient``."""
    python = os.environ.get("FER_TRITON_PYTHON") or str(ROOT / ".venv-tritonclient" / "bin" / "python")
    if not Path(python).exists():
        raise RuntimeError(f"no tritonclient Python at {python}: scripts/test.sh makes .venv-tritonclient (or set FER_TRITON_PYTHON)")
    return python


def _pinned(cpus: str, command: list[str]) -> list[str]:
    return (["taskset", "-c", cpus] if cpus else []) + command


def memory_mib(pids: list[int], field: str = "VmRSS") -> float:
    """``field`` of /proc/PID/status (VmRSS: resident now; VmHWM: the most resident), summed over ``pids``, MiB."""
    total = 0
    for pid in pids:
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(f"{field}:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


class RunningServer:
    """One engine under load: its address and its processes."""

    def __init__(self, name: str, target: str, leader: int) -> None:
        self.name, self.target, self.leader = name, target, leader

    def pids(self) -> list[int]:
        return group_pids(self.leader)


def _start_fer_cloud(stack: ExitStack, folder: Path, settings: LoadSettings, batching: bool) -> RunningServer:
    ready = folder / f"ready-{int(batching)}.json"
    command = cloud_command("127.0.0.1", ready, settings.server_threads, settings.weights)
    command += ["--max-batch-size", str(settings.max_batch_size if batching else 1), "--max-queue-delay-ms", str(settings.max_queue_delay_ms if batching else 0)]
    command += ["--device", settings.device]
    process = subprocess.Popen(_pinned(settings.server_cpu, command), stdout=subprocess.DEVNULL, start_new_session=True)
    stack.callback(stop_process, process)
    return RunningServer(FER_CLOUD, f"127.0.0.1:{wait_ready(process, ready)}", process.pid)


def _start_floor(stack: ExitStack, folder: Path, settings: LoadSettings, batching: bool, target: str) -> RunningServer:
    ready = folder / f"ready-{target}-{int(batching)}.json"
    command = [sys.executable, "-m", "fer_bench.measure.grpc_floor_server", "serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--raw"]
    command += ["--sync"] if target == GRPC_FLOOR_SYNC else []
    process = subprocess.Popen(_pinned(settings.server_cpu, command), cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
    stack.callback(stop_process, process)
    return RunningServer(target, f"127.0.0.1:{wait_ready(process, ready)}", process.pid)


def _triton_settings(settings: LoadSettings, batching: bool) -> "TritonSettings":
    from shared_model.training.export import TritonSettings

    return TritonSettings(
        features="fp32" if settings.datatype == DATATYPE_FP32 else "uint8", max_batch_size=settings.max_batch_size,
        max_queue_delay_us=settings.triton_queue_delay_us, dynamic_batching=batching, threads=settings.server_threads,
        device="gpu" if settings.device == "cuda" else "cpu",
    )


def _checkpoint(settings: LoadSettings) -> "Checkpoint":
    from shared_model.checkpoint import default_weights_path, load_checkpoint

    return load_checkpoint(Path(settings.weights) if settings.weights else default_weights_path())


def minimal_repository(model: "FERNet", root: Path, name: str, settings: "TritonSettings") -> Path:
    """A Triton repository serving ``name`` (fer_attention or fer_rest) with ``deploy/triton/minimal_model.py``.

    Beside it, the ONNX export of what the model computes (the cloud stage, or
    the cloud stage and the tail with softmax), checked against PyTorch; FP32 in
    and out, one instance, ``settings``' batching. Returns the model's folder.
    """
    import torch

    from shared_model.training.export import TRITON_FOLDER, Probabilities, export_onnx, triton_config

    model = model.eval()
    split = list(model.config.split_shape)
    if name == ATTENTION_MODEL:
        module, output = model.cloud, (FEATURES, "TYPE_FP32", split)
    else:
        module, output = Probabilities(model.cloud, model.tail), (PROBABILITIES, "TYPE_FP32", [model.config.num_classes])
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    export_onnx(module.eval(), torch.randn(1, *split), folder / "1" / "model.onnx")  # eval: a new wrapper is in training mode
    shutil.copy(TRITON_FOLDER / "minimal_model.py", folder / "1" / "model.py")
    (folder / "config.pbtxt").write_text(triton_config(name, settings, [(FEATURES, "TYPE_FP32", split)], [output], {}))
    return folder


def _start_triton(stack: ExitStack, folder: Path, settings: LoadSettings, batching: bool, target: str) -> RunningServer:
    from shared_model.training.export import triton_repository

    from .triton_server import TritonServer

    checkpoint = _checkpoint(settings)
    repository = folder / f"{target}-{'batching' if batching else 'single'}"
    with warnings.catch_warnings():  # the ONNX exporter's tracer warnings are no news here
        warnings.simplefilter("ignore")
        if target == TRITON_MINIMAL:
            minimal_repository(checkpoint.build_model(), repository, settings.model, _triton_settings(settings, batching))
        else:
            triton_repository(checkpoint.build_model(), repository, checkpoint.fingerprint, _triton_settings(settings, batching), models=(settings.model,))
    server = TritonServer(repository, cpus=settings.server_cpu)
    stack.callback(server.close)
    server.start(models=(settings.model,))
    assert server.process is not None
    return RunningServer(target, server.target, server.process.pid)


STARTERS = {
    FER_CLOUD: _start_fer_cloud,
    TRITON_MINIMAL: partial(_start_triton, target=TRITON_MINIMAL),
    TRITON_FULL: partial(_start_triton, target=TRITON_FULL),
    GRPC_FLOOR_AIO: partial(_start_floor, target=GRPC_FLOOR_AIO),
    GRPC_FLOOR_SYNC: partial(_start_floor, target=GRPC_FLOOR_SYNC),
}


def measure(server: RunningServer, settings: LoadSettings, concurrency: int, batching: bool, repeat: int, script: Path) -> LoadRecord:
    """One point: ``concurrency`` closed-loop clients against ``server`` for ``settings.seconds``."""
    pids = server.pids()
    command = [
        client_python(), str(script), server.target, settings.model, settings.datatype, str(concurrency), str(settings.seconds),
        ",".join(map(str, pids)), FEATURES, SCALE, ZERO_POINT, BATCH_SIZE,
    ]
    done = subprocess.run(_pinned(settings.client_cpu, command), capture_output=True, text=True, timeout=settings.seconds + 300)
    if done.returncode != 0:
        raise RuntimeError(f"the load client failed against {server.name}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    requests = result["requests"]
    return LoadRecord(
        target=server.name, batching=batching, concurrency=concurrency, repeat=repeat, requests=requests, errors=result["errors"],
        seconds=round(result["seconds"], 3), throughput_rps=requests / result["seconds"], p50_ms=result["p50_ms"], p90_ms=result["p90_ms"],
        p99_ms=result["p99_ms"], mean_batch_size=result["mean_batch_size"],
        server_cpu_us_per_request=result["server_cpu_s"] / max(requests, 1) * 1e6, server_rss_mib=memory_mib(pids := server.pids()),
        server_peak_rss_mib=memory_mib(pids, "VmHWM"), datatype=settings.datatype, model=settings.model,
    )


def _turns(servers: list[RunningServer], round_: int) -> Iterator[RunningServer]:
    """The engines of one round, each once, the first one rotating from round to round."""
    shift = round_ % len(servers)
    yield from servers[shift:] + servers[:shift]


def _check(settings: LoadSettings) -> None:
    """Refuse settings no engine could measure (ValueError), before anything starts."""
    unknown = [t for t in settings.targets if t not in STARTERS]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; expected some of {', '.join(TARGETS + FLOORS)}")
    if settings.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {settings.model!r}")
    if settings.datatype not in DATATYPES:
        raise ValueError(f"datatype must be one of {DATATYPES}, got {settings.datatype!r}")
    for fp32_only in (t for t in (TRITON_MINIMAL, *FLOORS) if t in settings.targets):
        if settings.datatype != DATATYPE_FP32:
            raise ValueError(f"{fp32_only} takes FP32 only: use --datatype {DATATYPE_FP32}, or leave it out of the targets")
    floors = [t for t in FLOORS if t in settings.targets]
    if floors and settings.model != ATTENTION_MODEL:
        raise ValueError(f"{', '.join(floors)} answer{'s' if len(floors) == 1 else ''} {ATTENTION_MODEL} only: leave --model out")
    client_python()


def server_sweep(settings: LoadSettings, progress: bool = True) -> list[LoadRecord]:
    """Every point of ``settings``, the engines taking turns round by round (see the module's docstring)."""
    from tqdm import tqdm

    _check(settings)
    points = len(settings.batching) * len(settings.concurrencies) * settings.repeats * len(settings.targets)
    bar = tqdm(total=points, desc="server load", unit="point", disable=not progress, file=sys.stderr)
    records: list[LoadRecord] = []
    with tempfile.TemporaryDirectory(prefix="fer-server-load-") as tmp:
        folder = Path(tmp)
        script = folder / "client.py"
        script.write_text(CLIENT)
        for batching in settings.batching:
            with ExitStack() as stack:
                servers = [STARTERS[name](stack, folder, settings, batching) for name in settings.targets]
                if settings.warmup_seconds > 0:  # a fresh server's first seconds (lazy initialisation) are no measure of the next
                    warmup = dataclasses.replace(settings, seconds=settings.warmup_seconds)
                    for server in servers:
                        measure(server, warmup, min(4, max(settings.concurrencies)), batching, -1, script)
                rounds = [(concurrency, repeat) for concurrency in settings.concurrencies for repeat in range(settings.repeats)]
                for round_, (concurrency, repeat) in enumerate(rounds):
                    for server in _turns(servers, round_):
                        records.append(measure(server, settings, concurrency, batching, repeat, script))
                        bar.update(1)
    bar.close()
    return sorted(records, key=lambda r: (not r.batching, settings.targets.index(r.target), r.concurrency, r.repeat))


def summary(records: list[LoadRecord]) -> list[dict]:
    """One row per engine, batching and concurrency: medians over the repeats, and the throughput's range."""
    groups: dict[tuple, list[LoadRecord]] = {}
    for record in records:
        groups.setdefault((record.target, record.batching, record.concurrency), []).append(record)
    rows = []
    for (target, batching, concurrency), group in groups.items():
        throughput = [r.throughput_rps for r in group]
        rows.append({
            "target": target, "batching": batching, "concurrency": concurrency, "repeats": len(group),
            "throughput_rps": statistics.median(throughput), "throughput_min": min(throughput), "throughput_max": max(throughput),
            **{key: statistics.median(getattr(r, key) for r in group) for key in ("p50_ms", "p90_ms", "p99_ms", "server_cpu_us_per_request", "server_rss_mib", "mean_batch_size")},
            "server_peak_rss_mib": max(r.server_peak_rss_mib for r in group), "errors": sum(r.errors for r in group),
        })
    return rows


def format_table(records: list[LoadRecord]) -> str:
    """One line per engine, batching and concurrency (medians over the repeats; peak memory: the most)."""
    lines = [
        f"{'engine':<16}{'batching':<9}{'clients':>8}{'req/s':>9}{'(range)':>14}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'cpu us/req':>11}"
        f"{'RSS MiB':>9}{'peak MiB':>9}{'batch':>7}{'errors':>7}"
    ]
    for row in summary(records):
        spread = f"{row['throughput_min']:.0f}-{row['throughput_max']:.0f}" if row["repeats"] > 1 else ""
        lines.append(
            f"{row['target']:<16}{'on' if row['batching'] else 'off':<9}{row['concurrency']:>8}{row['throughput_rps']:>9.0f}{spread:>14}"
            f"{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['server_cpu_us_per_request']:>11.0f}{row['server_rss_mib']:>9.0f}"
            f"{row['server_peak_rss_mib']:>9.0f}{_number(row['mean_batch_size'], 7, 2)}{row['errors']:>7}"
        )
    return "\n".join(lines)


def format_comparison(records: list[LoadRecord]) -> str:
    """fer-cloud against :data:`REFERENCE` per batching and concurrency: throughput ratios (of the medians, and of
    each round's pair, measured back to back), p50 of each and fer-cloud's memory; empty without both engines."""
    rows = {(r["target"], r["batching"], r["concurrency"]): r for r in summary(records)}
    paired = _paired_ratios(records)
    lines = [f"{FER_CLOUD} against {REFERENCE}, the reference (ratio: of the medians; rounds: of each round's pair)", f"{'batching':<9}{'clients':>8}{'ratio':>8}{'(rounds)':>14}{'p50 ms':>9}{'ref p50':>9}{'RSS MiB':>9}{'peak MiB':>9}"]
    for (batching, concurrency), ratios in paired.items():
        ours, theirs = rows[(FER_CLOUD, batching, concurrency)], rows[(REFERENCE, batching, concurrency)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
        lines.append(
            f"{'on' if batching else 'off':<9}{concurrency:>8}{ours['throughput_rps'] / theirs['throughput_rps']:>7.2f}x{spread:>14}"
            f"{ours['p50_ms']:>9.2f}{theirs['p50_ms']:>9.2f}{ours['server_rss_mib']:>9.0f}{ours['server_peak_rss_mib']:>9.0f}"
        )
    return "\n".join(lines) if paired else ""


def _paired_ratios(records: list[LoadRecord]) -> dict[tuple[bool, int], list[float]]:
    """fer-cloud's throughput over the reference's, round by round, per batching and concurrency."""
    by_round = {(r.target, r.batching, r.concurrency, r.repeat): r for r in records}
    ratios: dict[tuple[bool, int], list[float]] = {}
    for (target, batching, concurrency, repeat), ours in by_round.items():
        theirs = by_round.get((REFERENCE, batching, concurrency, repeat))
        if target == FER_CLOUD and theirs is not None and theirs.throughput_rps > 0:
            ratios.setdefault((batching, concurrency), []).append(ours.throughput_rps / theirs.throughput_rps)
    return ratios


def legend(targets: tuple[str, ...]) -> str:
    """Which engine is which."""
    return "\n".join(f"{target}: {DESCRIPTIONS[target]}" for target in targets)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _number(value: float, width: int, decimals: int) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{decimals}f}"


def plot(records: list[LoadRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right, cost) = plt.subplots(1, 3, figsize=(15, 4))
    rows = summary(records)
    model = records[0].model if records else ATTENTION_MODEL
    for index, target in enumerate(dict.fromkeys(r["target"] for r in rows)):
        color = f"C{index}"
        for batching, style in ((True, "-"), (False, "--")):
            line = sorted((r for r in rows if r["target"] == target and r["batching"] == batching), key=lambda r: r["concurrency"])
            if not line:
                continue
            label = f"{target}{' (reference)' if target == REFERENCE else ''}{'' if target in FLOORS else f', batching {_on(batching)}'}"
            xs = [r["concurrency"] for r in line]
            left.plot(xs, [r["throughput_rps"] for r in line], style, color=color, marker="o", label=label)
            if any(r["repeats"] > 1 for r in line):
                left.fill_between(xs, [r["throughput_min"] for r in line], [r["throughput_max"] for r in line], color=color, alpha=0.15)
            right.plot(xs, [r["p50_ms"] for r in line], style, color=color, marker="o", label=f"p50, {label}")
            right.plot(xs, [r["p99_ms"] for r in line], style, color=color, marker="x", alpha=0.6, label=f"p99, {label}")
            cost.plot(xs, [r["server_cpu_us_per_request"] for r in line], style, color=color, marker="o", label=label)
    left.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title=f"{model} throughput (one server core)")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title=f"{model} latency")
    cost.set(xscale="log", ylim=(0, None), xlabel="concurrent clients", ylabel="server CPU us / request", title="server CPU per request")
    for axis in (left, right, cost):
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def record_dicts(records: list[LoadRecord]) -> list[dict]:
    """The records for JSON and CSV: a figure the engine does not report is null, not NaN."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(r).items()} for r in records]
