"""Starting and stopping a real Triton Inference Server on loopback (for the tests and ``fer-bench server``).

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel, installed
by ``scripts/test.sh`` into ``.venv-triton`` together with what the models
import: this project (torch-free modules), onnxruntime, OpenCV, Pillow and
NumPy *below 2* (the wheel's backend stub was built against NumPy 1: under
NumPy 2 every output tensor reaches the client empty). ``FER_TRITON_SERVER``
names another ``tritonserver`` binary, ``FER_TRITON_MODEL_PYTHON`` another
Python for the models (default: the virtual environment holding the wheel).

The wheel ships the Python backend and one backend stub per Python version;
a backend folder is assembled per server from the wheel's Python backend and
the stub of the models' Python. The stub embeds that Python: its own
``libpython`` must come first on ``LD_LIBRARY_PATH`` (a system library of
another patch release does not match) and its ``bin`` folder first on ``PATH``
(the stub takes its ``site-packages`` from the ``python3`` found there).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shared_model.protocol import pb, pb_grpc

__all__ = ["ENV_VARIABLE", "PYTHON_VARIABLE", "TritonUnavailable", "find_tritonserver", "free_port", "TritonLayout", "group_pids", "python_facts", "TritonServer"]

ROOT = Path(__file__).resolve().parents[1]
ENV_VARIABLE = "FER_TRITON_SERVER"
PYTHON_VARIABLE = "FER_TRITON_MODEL_PYTHON"


class TritonUnavailable(RuntimeError):
    """No usable ``tritonserver`` here (the message says how to get one)."""


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary: ``$FER_TRITON_SERVER``, else the one in ``.venv-triton``."""
    named = os.environ.get(ENV_VARIABLE)
    if named:
        path = Path(named)
        if not path.is_file():
            raise TritonUnavailable(f"{ENV_VARIABLE}={named} is not a file")
        return path
    found = sorted(glob.glob(str(ROOT / ".venv-triton" / "lib" / "python*" / "site-packages" / "pytriton" / "tritonserver" / "bin" / "tritonserver")))
    if not found:
        raise TritonUnavailable(
            f"no tritonserver: scripts/test.sh installs nvidia-pytriton into .venv-triton, or set {ENV_VARIABLE} to a tritonserver binary"
        )
    return Path(found[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class TritonLayout:
    """Where the wheel keeps the server, its libraries, its backends and the stubs."""

    binary: Path
    dist: Path = field(init=False)
    libs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dist = self.binary.resolve().parent.parent  # .../pytriton/tritonserver
        self.libs = self.dist.parent.parent / "nvidia_pytriton.libs"

    def model_python(self) -> str:
        """``$FER_TRITON_MODEL_PYTHON``, else the Python of the virtual environment that holds the wheel."""
        named = os.environ.get(PYTHON_VARIABLE)
        python = Path(named) if named else self.dist.parents[4] / "bin" / "python"  # <venv>/lib/pythonX.Y/site-packages/pytriton/tritonserver
        if not python.exists():
            raise TritonUnavailable(f"no Python for the models at {python} (set {PYTHON_VARIABLE})")
        return str(python)

    def stub(self, python_version: str) -> Path:
        stub = self.dist / "python_backend_stubs" / python_version / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(f"the Triton wheel has no Python backend stub for Python {python_version}")
        return stub

    def backend_directory(self, folder: Path, python_version: str) -> Path:
        """The wheel's backends with the stub for ``python_version`` in the Python backend."""
        backends = folder / "backends"
        if not backends.exists():
            shutil.copytree(self.dist / "backends", backends)
            shutil.copy(self.stub(python_version), backends / "python" / "triton_python_backend_stub")
        return backends


def group_pids(leader: int) -> list[int]:
    """The processes of the group led by ``leader`` (a server started in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == leader:
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def python_facts(python: str) -> tuple[str, str]:
    """``X.Y`` and the folder of ``libpython`` of an interpreter."""
    script = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))"
    version, libdir = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    return version, libdir


class TritonServer:
    """``tritonserver`` serving ``repository`` over gRPC on 127.0.0.1 (HTTP and metrics off).

    ``cpus``: a taskset CPU list to pin the server (and its backend stubs) to.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self, repository: Path, port: int = 0, python: str | None = None, cpus: str | None = None, log: Path | None = None,
        binary: Path | None = None, extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repository = Path(repository)
        self.port = port
        self.cpus = cpus
        self.layout = TritonLayout(binary or find_tritonserver())
        self.python = python or self.layout.model_python()
        self.python_version, self.libpython_dir = python_facts(self.python)
        self._folder = Path(tempfile.mkdtemp(prefix="fer-triton-"))
        self.log_path = log or self._folder / "tritonserver.log"
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        backends = self.layout.backend_directory(self._folder, self.python_version)
        command = [
            str(self.layout.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            "--allow-http=false", "--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.port}",
            # The edge pings every 10 s on an idle connection (keepalive): allow it, as fer-cloud does.
            "--grpc-keepalive-permit-without-calls=true", "--grpc-http2-min-recv-ping-interval-without-data=5000",
            "--exit-timeout-secs=5", "--strict-readiness=true", *self.extra_args,
        ]
        return (["taskset", "-c", self.cpus] if self.cpus else []) + command

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{Path(self.python).parent}:{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (self.libpython_dir, str(self.layout.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout_s: float = 120.0, models: tuple[str, ...] = ()) -> "TritonServer":
        """Start and wait until the server and ``models`` are ready; a port taken meanwhile is retried (twice)."""
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
            with open(self.log_path, "ab") as log:
                # A session of its own, so that stopping it reaches the backend stubs too.
                self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                self._wait_ready(timeout_s, models)
                return self
            except TritonUnavailable:
                self.stop()
                if attempt == 2 or "already in use" not in self.log_tail().lower():
                    raise
        return self

    def _wait_ready(self, timeout_s: float, models: tuple[str, ...]) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise TritonUnavailable(f"tritonserver exited with {self.process.poll() if self.process else None}:\n{self.log_tail()}")
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready and all(
                        stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=1).ready for m in models
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TritonUnavailable(f"tritonserver not ready within {timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server and its backend stubs (its process group)."""
        return [] if self.process is None else group_pids(self.process.pid)

    def stop(self) -> None:
        """SIGTERM (Triton unloads its models and stops the stubs), then SIGKILL to the whole group if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # stubs left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        if process.poll() is None:
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        if self.process is None:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
