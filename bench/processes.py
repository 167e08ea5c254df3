"""Starting and stopping ``fer-cloud`` processes for the benchmarks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def cloud_command(host: str, ready: Path, threads: int, weights: str | None) -> list[str]:
    """``fer-cloud serve`` on ``host``, any free port, announcing itself in ``ready``."""
    command = [sys.executable, "-m", "cloud_server.cli", "serve", "--host", host, "--port", "0", "--ready-file", str(ready), "--threads", str(threads), "--log-level", "WARNING"]
    return command + (["--weights", weights] if weights else [])


def wait_ready(process: subprocess.Popen, ready: Path, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fer-cloud did not start (exit code {process.poll()})")
        time.sleep(0.1)
    return int(json.loads(ready.read_text())["port"])


def stop_process(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
