"""Latency under throttled bandwidth (the paper's Figure 8): which strategy wins where.

For each device profile an edge worker process runs (the phone and camera
profiles with one thread inside a cgroup CPU quota) with the edge's faster
runtime (ONNX Runtime unless told otherwise). For each shaper a ``fer-cloud``
process runs behind the throttled link (inside the cloud's network namespace
for ``netns``, behind the token-bucket proxy for ``proxy``). At each bandwidth
point the strategies take turns in blocks of :data:`BLOCK` faces, the first
of each untimed (this host's speed drifts, and under a CPU quota a face's time
depends on what ran before it), each timing the sample face ``requests`` times; each point reports p50/p90/p99
end-to-end latency, its breakdown, bytes per request, fallbacks, and the
physical floor (:func:`floor_ms`): compute + the link's least round trip + bytes
beyond the burst / bandwidth, and at least the bucket's time to earn a face's bytes.

:func:`run_trace` replays the paper's experiment: the bandwidth steps up and back
down while the strategies keep taking turns, optionally with the cloud killed
for a stretch and restarted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from shared_model.offload import DEFAULT_IMAGE_SIZE

from .processes import CloudProcess
from .shaping import (
    TBF_BURST_BYTES,
    CpuQuota,
    LinkSpec,
    NetnsLink,
    ShaperError,
    TokenBucketProxy,
    cpu_quota_unavailable_reason,
)

__all__ = [
    "KB", "StrategySpec", "STRATEGIES", "DEFAULT_STRATEGIES", "TRACE_STRATEGIES", "DeviceProfile", "PROFILES",
    "PointRecord", "percentile", "transfer_floor_ms", "floor_ms", "summarize", "EdgeProcess", "ShapedCloud", "netns_cloud",
    "proxy_cloud", "SHAPERS", "NetworkSettings", "run_network_benchmark", "compare_runtimes", "TraceSettings",
    "TraceEvent", "run_trace", "trace_summary", "trace_steps", "outage_report", "plot_trace", "text_table", "format_table", "winners",
    "plot", "record_dicts",
]

KB = 1000


@dataclass(frozen=True)
class StrategySpec:
    """One benchmarked way to classify: an edge strategy with its wire options."""

    name: str
    strategy: str
    encoding: str = "uint8"
    image_format: str = "jpeg"
    image_size: int | None = DEFAULT_IMAGE_SIZE
    split_returns: str = "attention"


STRATEGIES = {
    "edge": StrategySpec("edge", "edge"),
    "cloud-raw": StrategySpec("cloud-raw", "cloud", image_format="raw"),
    "cloud-jpeg": StrategySpec("cloud-jpeg", "cloud", image_format="jpeg"),
    "split": StrategySpec("split", "split", split_returns="attention"),
    "split-paper": StrategySpec("split-paper", "split", split_returns="features"),
    "split-fp16": StrategySpec("split-fp16", "split", encoding="fp16", split_returns="features"),
    "split-fp32": StrategySpec("split-fp32", "split", encoding="fp32", split_returns="features"),
    "split-rest": StrategySpec("split-rest", "split-rest"),
    "auto": StrategySpec("auto", "auto"),
}
DEFAULT_STRATEGIES = ("edge", "cloud-raw", "cloud-jpeg", "split-paper", "split", "split-rest", "auto")
TRACE_STRATEGIES = ("edge", "cloud-jpeg", "split-paper", "split", "split-rest", "auto")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    threads: int
    cpu_quota: float | None  # CPUs' worth of time, None for no quota
    description: str = ""


# Faces in a row per strategy turn, the first untimed. Under a CPU quota a face's time depends on what
# ran before it: a local inference right after a cloud call runs on the quota that call's network wait
# refilled, and is faster than one right after another local inference. A device runs one strategy at
# a time; so is each timed.
BLOCK = 5

PROFILES = {
    "laptop": DeviceProfile("laptop", os.cpu_count() or 1, None, "all cores"),
    "phone": DeviceProfile("phone", 1, 0.5, "1 thread, cgroup quota of half a core"),
    "camera": DeviceProfile("camera", 1, 0.25, "1 thread, cgroup quota of a quarter core"),
}

# The paper's Table 4 gives per-configuration latency for its own devices; this
# project reports its measured compute per profile beside it in docs/network.md.


@dataclass
class PointRecord:
    profile: str
    shaper: str
    bandwidth_kbps: float  # KB/s, KB = 1000 bytes
    rtt_ms: float
    loss_percent: float
    strategy: str
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    head_ms: float
    encode_ms: float
    network_ms: float
    server_ms: float
    tail_ms: float
    bytes_up: float
    bytes_down: float
    fallbacks: int
    floor_ms: float
    ratio_to_floor: float
    mean_ms: float = 0.0
    auto_choices: str = ""  # auto only: how often it chose each strategy, e.g. "edge:18 cloud:2"
    explorations: int = 0  # auto only: faces spent re-measuring a strategy it was not using
    round_trip_ms: float | None = None  # the least round trip of 20 tiny calls on this link after the point (the floor's)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def transfer_floor_ms(bytes_up: float, bytes_down: float, spec: LinkSpec, round_trip_ms: float | None = None) -> float:
    """Least time the link needs for one exchange: bytes / rate each way, less the token bucket's
    burst (an idle shaped link sends that much at line rate), plus one round trip (``round_trip_ms``,
    the least measured round trip of a tiny call on this link, which includes the added RTT; else the
    added RTT alone)."""
    if not bytes_up and not bytes_down:
        return 0.0
    serialization = sum(max(0.0, b - TBF_BURST_BYTES) for b in (bytes_up, bytes_down)) / spec.rate_bytes_per_s
    return serialization * 1000 + (spec.rtt_ms if round_trip_ms is None else round_trip_ms)


def floor_ms(compute_ms: float, bytes_up: float, bytes_down: float, spec: LinkSpec, round_trip_ms: float | None = None) -> float:
    """Least latency of one face among faces sent back to back (as each strategy's block is): its
    compute plus :func:`transfer_floor_ms`, and never less than the time the token bucket needs to
    earn a face's bytes in either direction. The burst is only free when the bucket had time to refill
    it: in a closed loop it refills during the face before, so at 200 KB/s a 6.4 KB split tensor
    takes 32 ms per face however short the compute is."""
    if not bytes_up and not bytes_down:
        return compute_ms
    earned = max(bytes_up, bytes_down) / spec.rate_bytes_per_s * 1000
    return max(compute_ms + transfer_floor_ms(bytes_up, bytes_down, spec, round_trip_ms), earned)


def summarize(samples: list[dict], profile: str, shaper: str, spec: LinkSpec, strategy: str, round_trip_ms: float | None = None) -> PointRecord:
    totals = [s["total"] for s in samples]
    median = {k: statistics.median(s[k] for s in samples) for k in ("head", "encode", "network", "server", "tail", "bytes_up", "bytes_down")}
    compute = statistics.median(s["total"] - s["network"] for s in samples)
    floor = floor_ms(compute, median["bytes_up"], median["bytes_down"], spec, round_trip_ms)
    p50 = statistics.median(totals)
    return PointRecord(
        profile=profile, shaper=shaper, bandwidth_kbps=spec.rate_bytes_per_s / KB, rtt_ms=spec.rtt_ms, loss_percent=spec.loss_percent,
        strategy=strategy, requests=len(samples), p50_ms=p50, p90_ms=percentile(totals, 0.9), p99_ms=percentile(totals, 0.99),
        head_ms=median["head"], encode_ms=median["encode"], network_ms=median["network"], server_ms=median["server"], tail_ms=median["tail"],
        bytes_up=median["bytes_up"], bytes_down=median["bytes_down"], fallbacks=sum(bool(s["fallback"]) for s in samples),
        floor_ms=floor, ratio_to_floor=p50 / floor if floor else float("nan"), mean_ms=statistics.fmean(totals), round_trip_ms=round_trip_ms,
        auto_choices=" ".join(f"{k}:{v}" for k, v in sorted(Counter(s["auto_choice"] for s in samples if s.get("auto_choice")).items())),
        explorations=sum(s.get("auto_reason") == "exploring" for s in samples),
    )


class EdgeProcess:
    """A benchmark edge worker (``fer_bench.edge_worker``) under a device profile."""

    def __init__(self, profile: DeviceProfile, weights: str | None = None, runtime: str = "onnx") -> None:
        self.profile = profile
        self.quota: CpuQuota | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fer_bench.edge_worker", str(profile.threads), weights or "", runtime],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        if profile.cpu_quota is not None:
            reason = cpu_quota_unavailable_reason()
            if reason:
                self.close()
                raise ShaperError(f"profile {profile.name} needs a CPU quota: {reason}")
            self.quota = CpuQuota(profile.cpu_quota, f"fer-{profile.name}-{os.getpid()}")
            self.quota.add(self.process.pid)
        ready = json.loads(self.process.stdout.readline() or "{}")  # type: ignore[union-attr]
        if not ready.get("ready"):
            raise RuntimeError("the edge worker did not start")

    def ask(self, command: dict) -> object:
        self.process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the edge worker exited (code {self.process.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(timeout=5)  # an idle worker exits at once on EOF; a busy one is killed
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.quota:
            self.quota.close()


@dataclass
class ShapedCloud:
    """A running cloud behind a shaper: ``target`` is what the edge dials, ``shape`` changes the link."""

    target: str
    shape: Callable[[LinkSpec], None]
    process: CloudProcess


@contextmanager
def netns_cloud(threads: int, weights: str | None) -> Iterator[ShapedCloud]:
    with NetnsLink() as link, tempfile.TemporaryDirectory() as tmp:
        cloud = CloudProcess(lambda command: link.popen(command, stdout=subprocess.DEVNULL), link.cloud_address, Path(tmp), threads, weights)
        try:
            port = cloud.start()
            yield ShapedCloud(f"{link.cloud_address}:{port}", link.shape, cloud)
        finally:
            cloud.stop()


@contextmanager
def proxy_cloud(threads: int, weights: str | None) -> Iterator[ShapedCloud]:
    with tempfile.TemporaryDirectory() as tmp:
        cloud = CloudProcess(lambda command: subprocess.Popen(command, stdout=subprocess.DEVNULL), "127.0.0.1", Path(tmp), threads, weights)
        try:
            port = cloud.start()
            with TokenBucketProxy("127.0.0.1", port, LinkSpec(1_000_000)) as proxy:
                yield ShapedCloud(f"127.0.0.1:{proxy.port}", proxy.set_spec, cloud)
        finally:
            cloud.stop()


SHAPERS = {"netns": netns_cloud, "proxy": proxy_cloud}


@dataclass
class NetworkSettings:
    bandwidths_kbps: tuple[float, ...] = tuple(range(200, 1001, 100))
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    shapers: tuple[str, ...] = ("netns", "proxy")
    profiles: tuple[str, ...] = ("laptop", "phone", "camera")
    requests: int = 20
    warmup: int = 2  # untimed rounds of every strategy at each point
    adapt: int = 25  # then untimed faces of auto alone: more than its exploration period, so a static point is its steady state
    rtt_ms: float = 0.0
    loss_percent: float = 0.0
    cloud_threads: int = 1
    timeout_ms: float = 30_000
    weights: str | None = None
    runtime: str = "onnx"
    block: int = BLOCK  # faces in a row per strategy turn, the first untimed


def _rounds(requests: int, block: int) -> int:
    """Turns of every strategy that time ``requests`` faces each (a block of B > 1 faces times B - 1)."""
    return -(-requests // max(1, block - 1)) if block > 1 else requests


def _specs(names: tuple[str, ...]) -> list[dict]:
    return [asdict(STRATEGIES[name]) for name in names]


def run_network_benchmark(settings: NetworkSettings, progress: bool = True) -> tuple[list[PointRecord], dict[str, dict[str, float]]]:
    """All points of the sweep (strategies taking turns in blocks at each point), and each profile's compute times."""
    from tqdm import tqdm

    records: list[PointRecord] = []
    compute: dict[str, dict[str, float]] = {}
    total = len(settings.profiles) * len(settings.shapers) * len(settings.bandwidths_kbps)
    bar = tqdm(total=total, desc="network sweep", unit="point", disable=not progress, file=sys.stderr)
    try:
        for profile_name in settings.profiles:
            edge = EdgeProcess(PROFILES[profile_name], settings.weights, settings.runtime)
            try:
                compute[profile_name] = {**edge.ask({"op": "compute", "runs": 30}), "runtime": settings.runtime}  # type: ignore[dict-item]
                for shaper in settings.shapers:
                    with SHAPERS[shaper](settings.cloud_threads, settings.weights) as cloud:
                        for bandwidth in settings.bandwidths_kbps:
                            spec = LinkSpec(bandwidth * KB, settings.rtt_ms, settings.loss_percent)
                            cloud.shape(spec)
                            samples = edge.ask({
                                "op": "run", "target": cloud.target, "strategies": _specs(settings.strategies),
                                "rounds": _rounds(settings.requests, settings.block), "warmup": settings.warmup, "adapt": settings.adapt,
                                "timeout_ms": settings.timeout_ms, "block": settings.block,
                            })
                            round_trip = edge.ask({"op": "round_trip", "target": cloud.target, "calls": 20})["round_trip_ms"]  # type: ignore[index]
                            for name in settings.strategies:
                                records.append(summarize(samples[name], profile_name, shaper, spec, name, round_trip))  # type: ignore[index]
                            bar.update(1)
            finally:
                edge.close()
    finally:
        bar.close()
    return records, compute


def compare_runtimes(profiles: tuple[str, ...], rounds: int = 10, runs_per_round: int = 5, weights: str | None = None) -> list[dict]:
    """Each profile's compute under PyTorch and under ONNX Runtime, the two workers taking turns (this host drifts)."""
    rows = []
    for name in profiles:
        workers = {runtime: EdgeProcess(PROFILES[name], weights, runtime) for runtime in ("torch", "onnx")}
        try:
            samples: dict[str, dict[str, list[float]]] = {runtime: {} for runtime in workers}
            for _ in range(rounds):
                for runtime, worker in workers.items():
                    for stage, value in worker.ask({"op": "compute", "runs": runs_per_round}).items():  # type: ignore[union-attr]
                        samples[runtime].setdefault(stage, []).append(value)
            for runtime, stages in samples.items():
                rows.append({"profile": name, "runtime": runtime, **{stage: statistics.median(values) for stage, values in stages.items()}})
        finally:
            for worker in workers.values():
                worker.close()
    return rows


# -- the paper's experiment as a trace --------------------------------------------------


@dataclass
class TraceSettings:
    profile: str = "phone"
    shapers: tuple[str, ...] = ("netns", "proxy")
    strategies: tuple[str, ...] = TRACE_STRATEGIES
    steps_kbps: tuple[float, ...] = (*range(200, 1001, 100), *range(900, 199, -100))
    dwell_s: float = 8.0
    kill_at_s: float | None = None  # kill the cloud (SIGKILL) this long into the trace ...
    restart_after_s: float = 20.0  # ... and restart it this much later
    cloud_threads: int = 1
    timeout_ms: float = 1_000
    weights: str | None = None
    runtime: str = "onnx"
    block: int = BLOCK  # faces in a row per strategy turn, the first untimed


@dataclass
class TraceEvent:
    t: float
    what: str


def _drive_link(cloud: ShapedCloud, settings: TraceSettings, started: float, events: list[TraceEvent], stop: threading.Event) -> None:
    """Step the rate at each dwell boundary, and kill/restart the cloud when asked (runs in a thread)."""
    plan: list[tuple[float, Callable[[], None], str]] = []
    for index, rate in enumerate(settings.steps_kbps):
        plan.append((index * settings.dwell_s, (lambda r=rate: cloud.shape(LinkSpec(r * KB))), f"rate {rate:.0f} KB/s"))
    if settings.kill_at_s is not None:
        plan.append((settings.kill_at_s, cloud.process.kill, "cloud killed"))
        plan.append((settings.kill_at_s + settings.restart_after_s, lambda: cloud.process.start(), "cloud restarted"))
    for at, action, what in sorted(plan, key=lambda p: p[0]):
        if stop.wait(max(0.0, started + at - time.monotonic())):
            return
        action()
        events.append(TraceEvent(round(time.monotonic() - started, 3), what))


def run_trace(settings: TraceSettings, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """One edge classifying in a loop (strategies taking turns) while the link steps; records and link events per shaper."""
    from tqdm import tqdm

    seconds = len(settings.steps_kbps) * settings.dwell_s
    records: list[dict] = []
    events: list[dict] = []
    edge = EdgeProcess(PROFILES[settings.profile], settings.weights, settings.runtime)
    try:
        for shaper in tqdm(settings.shapers, desc=f"trace ({seconds:.0f} s each)", unit="shaper", disable=not progress, file=sys.stderr):
            with SHAPERS[shaper](settings.cloud_threads, settings.weights) as cloud:
                cloud.shape(LinkSpec(settings.steps_kbps[0] * KB))
                command = {"target": cloud.target, "strategies": _specs(settings.strategies), "timeout_ms": settings.timeout_ms}
                edge.ask({**command, "op": "run", "rounds": 0, "warmup": 4})  # connections and caches, untimed
                shaper_events: list[TraceEvent] = []
                stop = threading.Event()
                started = time.monotonic()
                driver = threading.Thread(target=_drive_link, args=(cloud, settings, started, shaper_events, stop), daemon=True)
                driver.start()
                try:
                    samples = edge.ask({**command, "op": "trace", "seconds": seconds, "warmup": 0, "block": settings.block})
                finally:
                    stop.set()
                    driver.join(timeout=60)
                for name, rows in samples.items():  # type: ignore[union-attr]
                    records.extend({"shaper": shaper, "profile": settings.profile, "name": name, **row} for row in rows)
                events.extend({"shaper": shaper, **asdict(e)} for e in shaper_events)
    finally:
        edge.close()
    return records, events


def trace_summary(records: list[dict], settings: TraceSettings) -> list[dict]:
    """Per shaper and strategy: mean, p50, p90 latency, fallbacks, answers; and for auto, its choices."""
    rows = []
    for shaper in sorted({r["shaper"] for r in records}):
        for name in settings.strategies:
            mine = [r for r in records if r["shaper"] == shaper and r["name"] == name]
            if not mine:
                continue
            totals = [r["total"] for r in mine]
            choices: dict[str, int] = {}
            for r in mine:
                if r.get("auto_choice"):
                    choices[r["auto_choice"]] = choices.get(r["auto_choice"], 0) + 1
            rows.append({
                "shaper": shaper, "strategy": name, "faces": len(mine), "mean_ms": statistics.fmean(totals), "p50_ms": statistics.median(totals),
                "p90_ms": percentile(totals, 0.9), "fallbacks": sum(bool(r["fallback"]) for r in mine), "auto_choices": choices,
            })
    return rows


def trace_steps(records: list[dict], settings: TraceSettings) -> list[dict]:
    """Per shaper, step of the trace and strategy: faces, mean and p50 latency, and auto's choices (the
    figures behind any claim about a stretch of the trace, such as how soon a strategy recovered)."""
    rows = []
    last = len(settings.steps_kbps) - 1
    for shaper in sorted({r["shaper"] for r in records}):
        by_step: dict[tuple[int, str], list[dict]] = {}
        for r in records:
            if r["shaper"] == shaper:
                by_step.setdefault((min(int(r["t"] // settings.dwell_s), last), r["name"]), []).append(r)
        for step, rate in enumerate(settings.steps_kbps):
            for name in settings.strategies:
                mine = by_step.get((step, name))
                if not mine:
                    continue
                totals = [r["total"] for r in mine]
                rows.append({
                    "shaper": shaper, "step": step, "start_s": step * settings.dwell_s, "bandwidth_kbps": rate, "strategy": name,
                    "faces": len(mine), "mean_ms": statistics.fmean(totals), "p50_ms": statistics.median(totals),
                    "auto_choices": dict(Counter(r["auto_choice"] for r in mine if r.get("auto_choice"))),
                })
    return rows


def outage_report(records: list[dict], events: list[dict]) -> list[dict]:
    """For a trace with the cloud killed: per shaper and strategy, faces answered locally and why, the slowest
    face from the kill to 5 s after the restart, and how long after the restart the first remote answer came."""
    rows = []
    for shaper in sorted({e["shaper"] for e in events}):
        times = {e["what"]: e["t"] for e in events if e["shaper"] == shaper}
        if "cloud killed" not in times or "cloud restarted" not in times:
            continue
        killed, restarted = times["cloud killed"], times["cloud restarted"]
        for name in sorted({r["name"] for r in records if r["shaper"] == shaper}):
            mine = [r for r in records if r["shaper"] == shaper and r["name"] == name]
            back = [r["t"] for r in mine if r["t"] >= restarted and r["strategy"] != "edge"]
            reasons = Counter(r["fallback_reason"] for r in mine if r["fallback"])
            rows.append({
                "shaper": shaper, "strategy": name, "faces": len(mine), "answered_locally": dict(reasons),
                "slowest_during_outage_ms": max((r["total"] for r in mine if killed <= r["t"] <= restarted + 5), default=None),
                "back_on_cloud_after_restart_s": round(min(back) - restarted, 2) if back else None,
            })
    return rows


def _colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per plotted strategy, distinct for up to ten (matplotlib's cycle), in the order given."""
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def plot_trace(records: list[dict], events: list[dict], settings: TraceSettings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapers = sorted({r["shaper"] for r in records})
    figure, axes = plt.subplots(len(shapers), 1, figsize=(11, 4.2 * len(shapers)), squeeze=False, sharex=True)
    colours = _colours(settings.strategies)
    markers = {"edge": "o", "cloud": "s", "split": "^", "split-rest": "D"}
    for axis, shaper in zip(axes[:, 0], shapers):
        for name in settings.strategies:
            mine = sorted((r["t"], r["total"]) for r in records if r["shaper"] == shaper and r["name"] == name)
            if mine and name != "auto":
                axis.plot(*zip(*mine), color=colours[name], linewidth=0.9, alpha=0.75, label=name)
        auto = [r for r in records if r["shaper"] == shaper and r["name"] == "auto"]
        for choice, marker in markers.items():
            points = [(r["t"], r["total"]) for r in auto if r.get("auto_choice") == choice]
            if points:
                axis.scatter(*zip(*points), s=14, marker=marker, color="black", label=f"auto chose {choice}", zorder=3)
        rate = axis.twinx()
        times = [i * settings.dwell_s for i in range(len(settings.steps_kbps))]
        rate.step([*times, times[-1] + settings.dwell_s], [*settings.steps_kbps, settings.steps_kbps[-1]], where="post", color="grey", linestyle="--", linewidth=1)
        rate.set_ylabel("bandwidth (KB/s, dashed)")
        for event in events:
            if event["shaper"] == shaper and "cloud" in event["what"]:
                axis.axvline(event["t"], color="red", linewidth=1)
                axis.annotate(event["what"], (event["t"], axis.get_ylim()[1] if axis.get_ylim()[1] else 1), fontsize=7, color="red", rotation=90, va="top")
        axis.set(yscale="log", ylabel="latency per face (ms)", title=f"{settings.profile} edge, {shaper} shaper: bandwidth steps every {settings.dwell_s:.0f} s")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7, loc="upper left", ncol=3)
    axes[-1, 0].set_xlabel("time (s)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def text_table(header: str, row: str, rows: Iterable[Mapping[str, Any]]) -> str:
    """A header line, then ``row.format_map`` of each row."""
    return "\n".join([header, *(row.format_map(r) for r in rows)])


def format_table(records: list[PointRecord]) -> str:
    """The points as a table."""
    return text_table(
        f"{'profile':<8}{'shaper':<7}{'KB/s':>6}  {'strategy':<15}{'p50 ms':>8}{'mean':>8}{'p90 ms':>8}{'p99 ms':>8}{'floor':>8}{'x floor':>8}{'up B':>8}{'down B':>8}{'fallbk':>7}  auto's choices",
        "{profile:<8}{shaper:<7}{bandwidth_kbps:>6.0f}  {strategy:<15}{p50_ms:>8.1f}{mean_ms:>8.1f}{p90_ms:>8.1f}{p99_ms:>8.1f}"
        "{floor_ms:>8.1f}{ratio_to_floor:>8.2f}{bytes_up:>8.0f}{bytes_down:>8.0f}{fallbacks:>7}  {auto_choices}",
        map(vars, records),
    )


def winners(records: list[PointRecord]) -> dict[tuple[str, str, float], str]:
    """Fastest strategy (by p50) at each (profile, shaper, bandwidth)."""
    best: dict[tuple[str, str, float], PointRecord] = {}
    for r in records:
        key = (r.profile, r.shaper, r.bandwidth_kbps)
        if key not in best or r.p50_ms < best[key].p50_ms:
            best[key] = r
    return {k: v.strategy for k, v in best.items()}


def plot(records: list[PointRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = sorted({r.profile for r in records}, key=list(PROFILES).index)
    figure, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4.5), squeeze=False, sharey=False)
    styles = {"netns": "-", "proxy": "--"}
    colours = _colours([name for name in STRATEGIES if any(r.strategy == name for r in records)])
    for axis, profile in zip(axes[0], profiles):
        for shaper in sorted({r.shaper for r in records}):
            for strategy in STRATEGIES:
                points = sorted((r.bandwidth_kbps, r.p50_ms) for r in records if r.profile == profile and r.shaper == shaper and r.strategy == strategy)
                if points:
                    axis.plot(*zip(*points), styles.get(shaper, ":"), marker="o", markersize=3, color=colours[strategy], label=f"{strategy} ({shaper})")
        axis.set(title=f"{profile} edge", xlabel="bandwidth (KB/s, each direction)", ylabel="end-to-end latency, p50 (ms)", yscale="log")
        axis.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    figure.suptitle("Latency under throttled bandwidth (solid: tc in netns, dashed: userspace proxy)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def record_dicts(records: list[PointRecord]) -> list[dict]:
    return [asdict(r) for r in records]
