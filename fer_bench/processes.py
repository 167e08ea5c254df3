"""Starting and stopping ``fer-cloud`` processes for the benchmarks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

__all__ = ["cloud_command", "wait_ready", "stop_process", "CloudProcess"]


def cloud_command(host: str, ready: Path, threads: int, weights: str | None, port: int = 0) -> list[str]:
    """``fer-cloud serve`` on ``host`` and ``port`` (0: any free one), announcing itself in ``ready``."""
    command = [sys.executable, "-m", "cloud_server.cli", "serve", "--host", host, "--port", str(port), "--ready-file", str(ready), "--threads", str(threads), "--log-level", "WARNING"]
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


class CloudProcess:
    """A ``fer-cloud serve`` process that can be killed (SIGKILL: a crash) and restarted on the same port."""

    def __init__(self, launch: Callable[[list[str]], subprocess.Popen], host: str, folder: Path, threads: int, weights: str | None) -> None:
        self._launch, self.host, self.folder, self.threads, self.weights = launch, host, folder, threads, weights
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> int:
        ready = self.folder / f"ready-{time.monotonic_ns()}.json"
        self.process = self._launch(cloud_command(self.host, ready, self.threads, self.weights, self.port))
        self.port = wait_ready(self.process, ready)
        return self.port

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)
