"""Throttled links between the edge and the cloud, and CPU-constrained edge devices.

Two shapers, both limiting each direction separately:

- :class:`NetnsLink`: the real kernel. A network namespace for the cloud, joined
  to this one by a veth pair on a private /30 that exists only between the two
  ends; ``tc`` shapes the egress of each end (``tbf`` for the rate, ``netem``
  under it for added delay and loss). Needs root.
- :class:`TokenBucketProxy`: a userspace TCP proxy on loopback with one token
  bucket per direction and an optional added one-way delay. Runs anywhere;
  cannot drop packets (TCP sees none), so loss needs the netns shaper.

KB means 1000 bytes: 200 KB/s is ``1600kbit`` in tc.

:class:`CpuQuota` puts a process into a cgroup with a CPU bandwidth quota
(cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``): a real CPU constraint for
the phone-like edge profile, not a sleep.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TBF_BURST_BYTES", "TBF_LIMIT_BYTES", "PROXY_CHUNK", "ShaperError", "LinkSpec", "netns_unavailable_reason",
    "NetnsLink", "TokenBucket", "TokenBucketProxy", "CpuQuota", "cpu_quota_unavailable_reason",
]

TBF_BURST_BYTES = 3000  # two Ethernet frames: the bucket a link may send back to back
TBF_LIMIT_BYTES = 4_000_000  # queue long enough for the largest request at the lowest rate
PROXY_CHUNK = 1500


class ShaperError(RuntimeError):
    """A shaper that cannot be set up here; the message says why."""


@dataclass(frozen=True)
class LinkSpec:
    """One direction-symmetric link: rate in bytes per second, added round-trip time, loss."""

    rate_bytes_per_s: float
    rtt_ms: float = 0.0
    loss_percent: float = 0.0

    @property
    def tc_rate(self) -> str:
        return f"{round(self.rate_bytes_per_s * 8 / 1000)}kbit"


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ShaperError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def netns_unavailable_reason() -> str | None:
    """None when network namespaces and tc can be used here, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    return None


class NetnsLink:
    """The cloud's own network namespace behind a shaped veth pair.

    The edge stays in this namespace and reaches the cloud at :attr:`cloud_address`;
    the /30 between the two veth ends routes nowhere else.
    """

    def __init__(self, tag: str | None = None, subnet_octet: int | None = None) -> None:
        tag = tag or str(os.getpid() % 100000)
        self.namespace = f"fer-cloud-{tag}"
        self.edge_device = f"fer-e{tag}"[:15]
        self.cloud_device = f"fer-c{tag}"[:15]
        octet = subnet_octet if subnet_octet is not None else (os.getpid() % 63) * 4
        self.edge_address = f"10.254.{octet // 256}.{octet % 256 + 1}"
        self.cloud_address = f"10.254.{octet // 256}.{octet % 256 + 2}"
        self._up = False

    def __enter__(self) -> "NetnsLink":
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _in_namespace(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *command]

    def setup(self) -> None:
        reason = netns_unavailable_reason()
        if reason:
            raise ShaperError(reason)
        self.teardown()  # a previous run that died may have left these behind
        _run(["ip", "netns", "add", self.namespace])
        self._up = True
        _run(["ip", "link", "add", self.edge_device, "type", "veth", "peer", "name", self.cloud_device])
        _run(["ip", "link", "set", self.cloud_device, "netns", self.namespace])
        _run(["ip", "addr", "add", f"{self.edge_address}/30", "dev", self.edge_device])
        _run(["ip", "link", "set", self.edge_device, "up"])
        _run(self._in_namespace(["ip", "addr", "add", f"{self.cloud_address}/30", "dev", self.cloud_device]))
        _run(self._in_namespace(["ip", "link", "set", self.cloud_device, "up"]))
        _run(self._in_namespace(["ip", "link", "set", "lo", "up"]))

    def shape(self, spec: LinkSpec | None) -> None:
        """Apply ``spec`` to both directions (None removes shaping)."""
        self._shape_device([], self.edge_device, spec)
        self._shape_device(self._in_namespace([]), self.cloud_device, spec)

    @staticmethod
    def _shape_device(prefix: list[str], device: str, spec: LinkSpec | None) -> None:
        subprocess.run([*prefix, "tc", "qdisc", "del", "dev", device, "root"], capture_output=True)
        if spec is None:
            return
        tbf = ["tbf", "rate", spec.tc_rate, "burst", str(TBF_BURST_BYTES), "limit", str(TBF_LIMIT_BYTES)]
        _run([*prefix, "tc", "qdisc", "add", "dev", device, "root", "handle", "1:", *tbf])
        if spec.rtt_ms > 0 or spec.loss_percent > 0:
            netem = ["netem", "delay", f"{spec.rtt_ms / 2:.3f}ms", "loss", f"{spec.loss_percent}%", "limit", "100000"]
            try:
                _run([*prefix, "tc", "qdisc", "add", "dev", device, "parent", "1:1", "handle", "10:", *netem])
            except ShaperError as error:
                if "unknown" in str(error):
                    raise ShaperError(
                        "this kernel has no netem qdisc (sch_netem), which added RTT and loss need in the netns "
                        "shaper; the proxy shaper adds RTT in userspace (no loss)"
                    ) from None
                raise

    def popen(self, command: list[str], **kwargs: object) -> subprocess.Popen:
        """Start a process inside the cloud's namespace."""
        return subprocess.Popen(self._in_namespace(command), **kwargs)  # type: ignore[call-overload]

    def teardown(self) -> None:
        subprocess.run(["ip", "link", "del", self.edge_device], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        self._up = False


class TokenBucket:
    """Bytes may pass at ``rate`` per second with at most ``capacity`` at once; thread-safe."""

    def __init__(self, rate: float, capacity: float = TBF_BURST_BYTES) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._stamp = time.perf_counter()
        self._lock = threading.Lock()

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill()
            self.rate = rate

    def _refill(self) -> None:
        now = time.perf_counter()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, amount: int) -> None:
        """Block until ``amount`` bytes (at most ``capacity``) may pass."""
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= amount:
                    self._tokens -= amount
                    return
                wait = (amount - self._tokens) / self.rate
            time.sleep(wait)


class _Direction:
    """One direction of one proxied connection: read, hold for the delay, release at the rate."""

    def __init__(self, source: socket.socket, sink: socket.socket, bucket: TokenBucket, delay: "callable") -> None:
        self.source, self.sink, self.bucket, self.delay = source, sink, bucket, delay
        self._queue: deque[tuple[float, bytes]] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.source.recv(65536):
                with self._ready:
                    self._queue.append((time.perf_counter(), data))
                    self._ready.notify()
        except OSError:
            pass
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _write(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._queue and not self._closed:
                        self._ready.wait()
                    if not self._queue:
                        break
                    arrived, data = self._queue.popleft()
                hold = arrived + self.delay() - time.perf_counter()
                if hold > 0:
                    time.sleep(hold)
                for start in range(0, len(data), PROXY_CHUNK):
                    chunk = data[start : start + PROXY_CHUNK]
                    self.bucket.take(len(chunk))
                    self.sink.sendall(chunk)
            self.sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class TokenBucketProxy:
    """A TCP proxy on loopback shaping each direction with its own token bucket."""

    def __init__(self, target_host: str, target_port: int, spec: LinkSpec, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.spec = spec
        self.upstream = TokenBucket(spec.rate_bytes_per_s)
        self.downstream = TokenBucket(spec.rate_bytes_per_s)
        self._listener = socket.create_server((listen_host, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_spec(self, spec: LinkSpec | None) -> None:
        """Shape both directions to ``spec``; None forwards at full speed (still through the proxy)."""
        self.spec = spec or LinkSpec(math.inf)
        self.upstream.set_rate(self.spec.rate_bytes_per_s)
        self.downstream.set_rate(self.spec.rate_bytes_per_s)

    def _one_way_delay(self) -> float:
        return self.spec.rtt_ms / 2000

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            _Direction(client, server, self.upstream, self._one_way_delay).start()
            _Direction(server, client, self.downstream, self._one_way_delay).start()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> "TokenBucketProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CpuQuota:
    """A cgroup limiting its processes to ``cores`` CPUs' worth of time (e.g. 0.5)."""

    # A short period spreads the quota finely: a 20 ms inference is slowed
    # throughout, instead of running at full speed on a budget saved while idle.
    PERIOD_US = 5_000

    def __init__(self, cores: float, name: str | None = None) -> None:
        self.cores = cores
        self.name = name or f"fer-edge-{os.getpid()}"
        self.path = self._create()

    def _create(self) -> Path:
        quota = int(self.cores * self.PERIOD_US)
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
            path = v2 / self.name
            path.mkdir(exist_ok=True)
            (path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
            return path
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            path = v1 / self.name
            path.mkdir(exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
            return path
        raise ShaperError("no writable cgroup CPU controller (cgroup v2 cpu.max or v1 cpu.cfs_quota_us) here")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def cpu_quota_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    try:
        CpuQuota(0.5, f"fer-probe-{os.getpid()}").close()
    except (ShaperError, OSError) as error:
        return str(error)
    return None
