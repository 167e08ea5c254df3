"""Latency under throttled bandwidth (the paper's Figure 8): which strategy wins where.

For each device profile an edge worker process runs (the phone profile with one
thread inside a cgroup CPU quota). For each shaper a ``fer-cloud`` process runs
behind the throttled link (inside the cloud's network namespace for ``netns``,
behind the token-bucket proxy for ``proxy``). For each bandwidth point every
strategy classifies the sample face ``requests`` times; each point reports
p50/p90/p99 end-to-end latency, its breakdown, bytes per request, fallbacks,
and the physical floor: compute + bytes / bandwidth + RTT.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from .processes import cloud_command, stop_process, wait_ready
from .shaping import (
    TBF_BURST_BYTES,
    CpuQuota,
    LinkSpec,
    NetnsLink,
    ShaperError,
    TokenBucketProxy,
    cpu_quota_unavailable_reason,
)

KB = 1000


@dataclass(frozen=True)
class StrategySpec:
    name: str
    strategy: str
    encoding: str = "uint8"
    image_format: str = "jpeg"


STRATEGIES = {
    "edge": StrategySpec("edge", "edge"),
    "cloud-raw": StrategySpec("cloud-raw", "cloud", image_format="raw"),
    "cloud-jpeg": StrategySpec("cloud-jpeg", "cloud", image_format="jpeg"),
    "split-uint8": StrategySpec("split-uint8", "split", encoding="uint8"),
    "split-fp16": StrategySpec("split-fp16", "split", encoding="fp16"),
    "split-fp32": StrategySpec("split-fp32", "split", encoding="fp32"),
}
DEFAULT_STRATEGIES = ("edge", "cloud-raw", "cloud-jpeg", "split-uint8")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    threads: int
    cpu_quota: float | None  # CPUs' worth of time, None for no quota


PROFILES = {
    "laptop": DeviceProfile("laptop", os.cpu_count() or 1, None),
    "phone": DeviceProfile("phone", 1, 0.5),
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def transfer_floor_ms(bytes_up: float, bytes_down: float, spec: LinkSpec) -> float:
    """Least time the link needs for one exchange: bytes / rate each way, less the token bucket's
    burst (an idle shaped link sends that much at line rate), plus one round trip."""
    if not bytes_up and not bytes_down:
        return 0.0
    serialization = sum(max(0.0, b - TBF_BURST_BYTES) for b in (bytes_up, bytes_down)) / spec.rate_bytes_per_s
    return serialization * 1000 + spec.rtt_ms


def summarize(samples: list[dict], profile: str, shaper: str, spec: LinkSpec, strategy: str) -> PointRecord:
    totals = [s["total"] for s in samples]
    median = {k: statistics.median(s[k] for s in samples) for k in ("head", "encode", "network", "server", "tail", "bytes_up", "bytes_down")}
    compute = statistics.median(s["total"] - s["network"] for s in samples)
    floor = compute + transfer_floor_ms(median["bytes_up"], median["bytes_down"], spec)
    p50 = statistics.median(totals)
    return PointRecord(
        profile=profile, shaper=shaper, bandwidth_kbps=spec.rate_bytes_per_s / KB, rtt_ms=spec.rtt_ms, loss_percent=spec.loss_percent,
        strategy=strategy, requests=len(samples), p50_ms=p50, p90_ms=percentile(totals, 0.9), p99_ms=percentile(totals, 0.99),
        head_ms=median["head"], encode_ms=median["encode"], network_ms=median["network"], server_ms=median["server"], tail_ms=median["tail"],
        bytes_up=median["bytes_up"], bytes_down=median["bytes_down"], fallbacks=sum(bool(s["fallback"]) for s in samples),
        floor_ms=floor, ratio_to_floor=p50 / floor if floor else float("nan"),
    )


class EdgeProcess:
    """A benchmark edge worker (``bench.edge_worker``) under a device profile."""

    def __init__(self, profile: DeviceProfile, weights: str | None = None) -> None:
        self.profile = profile
        self.quota: CpuQuota | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.edge_worker", str(profile.threads), weights or ""],
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
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.quota:
            self.quota.close()


@dataclass
class ShapedCloud:
    """A running cloud behind a shaper: ``target`` is what the edge dials, ``shape`` changes the link."""

    target: str
    shape: Callable[[LinkSpec], None]


@contextmanager
def netns_cloud(threads: int, weights: str | None) -> Iterator[ShapedCloud]:
    with NetnsLink() as link, tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        process = link.popen(cloud_command(link.cloud_address, ready, threads, weights), stdout=subprocess.DEVNULL)
        try:
            port = wait_ready(process, ready)
            yield ShapedCloud(f"{link.cloud_address}:{port}", link.shape)
        finally:
            stop_process(process)


@contextmanager
def proxy_cloud(threads: int, weights: str | None) -> Iterator[ShapedCloud]:
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        process = subprocess.Popen(cloud_command("127.0.0.1", ready, threads, weights), stdout=subprocess.DEVNULL)
        try:
            port = wait_ready(process, ready)
            with TokenBucketProxy("127.0.0.1", port, LinkSpec(1_000_000)) as proxy:
                yield ShapedCloud(f"127.0.0.1:{proxy.port}", proxy.set_spec)
        finally:
            stop_process(process)


SHAPERS = {"netns": netns_cloud, "proxy": proxy_cloud}


@dataclass
class NetworkSettings:
    bandwidths_kbps: tuple[float, ...] = tuple(range(200, 1001, 100))
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    shapers: tuple[str, ...] = ("netns", "proxy")
    profiles: tuple[str, ...] = ("laptop", "phone")
    requests: int = 10
    rtt_ms: float = 0.0
    loss_percent: float = 0.0
    cloud_threads: int = 1
    timeout_ms: float = 30_000
    weights: str | None = None


def run_network_benchmark(settings: NetworkSettings, progress: bool = True) -> tuple[list[PointRecord], dict[str, dict[str, float]]]:
    """All points of the sweep, and each profile's measured compute times."""
    from tqdm import tqdm

    records: list[PointRecord] = []
    compute: dict[str, dict[str, float]] = {}
    total = len(settings.profiles) * len(settings.shapers) * len(settings.bandwidths_kbps) * len(settings.strategies)
    bar = tqdm(total=total, desc="network sweep", unit="point", disable=not progress, file=sys.stderr)
    for profile_name in settings.profiles:
        edge = EdgeProcess(PROFILES[profile_name], settings.weights)
        try:
            compute[profile_name] = edge.ask({"op": "compute", "runs": 30})  # type: ignore[assignment]
            for shaper in settings.shapers:
                with SHAPERS[shaper](settings.cloud_threads, settings.weights) as cloud:
                    for bandwidth in settings.bandwidths_kbps:
                        spec = LinkSpec(bandwidth * KB, settings.rtt_ms, settings.loss_percent)
                        cloud.shape(spec)
                        for name in settings.strategies:
                            strategy = STRATEGIES[name]
                            samples = edge.ask({
                                "op": "run", "target": cloud.target, "strategy": strategy.strategy, "encoding": strategy.encoding,
                                "image_format": strategy.image_format, "requests": settings.requests, "timeout_ms": settings.timeout_ms,
                            })
                            records.append(summarize(samples, profile_name, shaper, spec, name))  # type: ignore[arg-type]
                            bar.update(1)
        finally:
            edge.close()
    bar.close()
    return records, compute


def format_table(records: list[PointRecord]) -> str:
    lines = [f"{'profile':<8}{'shaper':<7}{'KB/s':>6}  {'strategy':<12}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'floor':>9}{'x floor':>8}{'up B':>8}{'down B':>8}{'fallbk':>7}"]
    for r in records:
        lines.append(
            f"{r.profile:<8}{r.shaper:<7}{r.bandwidth_kbps:>6.0f}  {r.strategy:<12}{r.p50_ms:>9.1f}{r.p90_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.floor_ms:>9.1f}{r.ratio_to_floor:>8.2f}{r.bytes_up:>8.0f}{r.bytes_down:>8.0f}{r.fallbacks:>7}"
        )
    return "\n".join(lines)


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

    profiles = sorted({r.profile for r in records}, key=["laptop", "phone"].index)
    figure, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4.5), squeeze=False, sharey=False)
    styles = {"netns": "-", "proxy": "--"}
    colours = {name: f"C{i}" for i, name in enumerate(STRATEGIES)}
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
