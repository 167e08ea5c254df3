"""Each shaper really limits throughput in both directions: N bytes take about N / rate."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from fer_bench.shaping import (
    CpuQuota,
    LinkSpec,
    NetnsLink,
    TokenBucketProxy,
    cpu_quota_unavailable_reason,
    netns_unavailable_reason,
)

RATE = 200_000  # bytes per second (200 KB/s)
PAYLOAD = 100_000  # 0.5 s at RATE
TOLERANCE = (0.85, 1.35)  # measured time / (PAYLOAD / RATE); the upper slack covers a loaded CI machine

# Receives PAYLOAD bytes, answers one byte (upload done), then sends PAYLOAD bytes (download).
SINK_THEN_SOURCE = f"""
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
received = 0
while received < {PAYLOAD}:
    received += len(connection.recv(65536))
connection.sendall(b"!")
connection.recv(1)
connection.sendall(bytes({PAYLOAD}))
connection.close()
"""


def _transfer_times(host: str, port: int) -> tuple[float, float]:
    """Seconds to upload PAYLOAD bytes and to download PAYLOAD bytes through the link."""
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        conn.sendall(bytes(PAYLOAD))
        assert conn.recv(1) == b"!"
        upload = time.perf_counter() - started
        started = time.perf_counter()
        conn.sendall(b"?")
        received = 0
        while received < PAYLOAD:
            chunk = conn.recv(65536)
            assert chunk, "connection closed early"
            received += len(chunk)
        download = time.perf_counter() - started
    return upload, download


def _start_sink(command_prefix: list[str], host: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([*command_prefix, sys.executable, "-c", SINK_THEN_SOURCE, host], stdout=subprocess.PIPE, text=True)
    return process, int(process.stdout.readline())


def _assert_rate(seconds: float, direction: str) -> None:
    ratio = seconds / (PAYLOAD / RATE)
    assert TOLERANCE[0] <= ratio <= TOLERANCE[1], f"{direction}: {seconds:.3f} s is {ratio:.2f}x the expected {PAYLOAD / RATE:.2f} s"


def test_proxy_limits_both_directions() -> None:
    sink, port = _start_sink([], "127.0.0.1")
    with TokenBucketProxy("127.0.0.1", port, LinkSpec(RATE)) as proxy:
        upload, download = _transfer_times("127.0.0.1", proxy.port)
    sink.wait(timeout=30)
    _assert_rate(upload, "upload")
    _assert_rate(download, "download")


def test_proxy_adds_the_requested_round_trip() -> None:
    sink, port = _start_sink([], "127.0.0.1")
    with TokenBucketProxy("127.0.0.1", port, LinkSpec(10_000_000, rtt_ms=200)) as proxy:
        upload, _ = _transfer_times("127.0.0.1", proxy.port)
    sink.wait(timeout=30)
    assert 0.19 <= upload <= 0.5  # one round trip (data up, '!' back) plus 20 ms of transfer


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=f"netns shaper: {netns_unavailable_reason()}")
def test_netns_tc_limits_both_directions() -> None:
    with NetnsLink(tag=f"t{threading.get_ident() % 10000}") as link:
        link.shape(LinkSpec(RATE))
        sink, port = _start_sink(["ip", "netns", "exec", link.namespace], link.cloud_address)
        try:
            upload, download = _transfer_times(link.cloud_address, port)
        finally:
            sink.wait(timeout=30)
    _assert_rate(upload, "upload")
    _assert_rate(download, "download")


@pytest.mark.skipif(cpu_quota_unavailable_reason() is not None, reason=f"CPU quota: {cpu_quota_unavailable_reason()}")
def test_cpu_quota_slows_a_busy_process() -> None:
    busy = "import time\nt = time.process_time()\nstart = time.perf_counter()\nwhile time.process_time() - t < 0.3: pass\nprint(time.perf_counter() - start)"
    quota = CpuQuota(0.25, "fer-test-quota")
    try:
        process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        quota.add(process.pid)
        out, _ = process.communicate("go\n", timeout=30)
    finally:
        quota.close()
    wall = float(out)
    assert wall > 0.3 / 0.25 * 0.8  # 0.3 s of CPU at a quarter of a core takes at least ~1 s
