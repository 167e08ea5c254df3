"""Where the edge runs its partitions: PyTorch, or ONNX Runtime for a device without torch.

Both take and return NumPy arrays: ``head`` (N, 3, S, S) -> split tensor,
``cloud`` split -> attended split (the local fallback), ``tail`` -> class scores.
The ONNX backend reads a folder written by ``fer-train export`` (``head.onnx``,
``cloud.onnx``, ``tail.onnx`` and ``model.json`` with the config and the
fingerprint of the checkpoint it came from); the package ships one for the
default weights.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from shared_model.config import ModelConfig

__all__ = [
    "RUNTIMES", "Backend", "TorchBackend", "shipped_onnx_dir", "OnnxBackend", "as_backend", "onnxruntime_available",
    "resolve_runtime", "load_backend",
]

RUNTIMES = ("auto", "torch", "onnx")


class Backend(ABC):
    config: ModelConfig
    fingerprint: str

    @abstractmethod
    def head(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def cloud(self, z: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def tail(self, z: np.ndarray) -> np.ndarray: ...


class TorchBackend(Backend):
    """A :class:`shared_model.network.FERNet` in eval mode."""

    def __init__(self, model: Any) -> None:
        from shared_model.checkpoint import model_fingerprint

        self.model = model.eval()
        self.config = model.config
        self.fingerprint = model_fingerprint(model)

    def _run(self, module: Any, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def head(self, x: np.ndarray) -> np.ndarray:
        return self._run(self.model.head, x)

    def cloud(self, z: np.ndarray) -> np.ndarray:
        return self._run(self.model.cloud, z)

    def tail(self, z: np.ndarray) -> np.ndarray:
        return self._run(self.model.tail, z)


def shipped_onnx_dir() -> Path:
    return Path(str(resources.files("edge_client") / "onnx_model"))


class OnnxBackend(Backend):
    """The partitions exported by ``fer-train export``, run by ONNX Runtime on the CPU."""

    def __init__(self, folder: Path | None = None, threads: int | None = None, spin: bool = False) -> None:
        """``spin``: let ONNX Runtime's worker threads spin between runs (its default; off here, see below)."""
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("--runtime onnx needs onnxruntime: pip install 'fer-split[edge-lite]'") from error
        folder = Path(folder) if folder else shipped_onnx_dir()
        manifest_path = folder / "model.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no exported model in {folder} (make one with `fer-train export --out {folder}`)")
        manifest = json.loads(manifest_path.read_text())
        self.config = ModelConfig.from_dict(manifest["config"])
        self.fingerprint = manifest["fingerprint"]
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # ONNX Runtime's worker threads spin after each run by default, waiting for the next. With a session
        # per partition, three pools spun on two cores and slowed each other: 7.95 against 4.39 ms per face
        # back to back, 26.8 against 4.7 ms of CPU per face with 5 ms between faces (docs/network.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._sessions = {
            part: onnxruntime.InferenceSession(str(folder / f"{part}.onnx"), options, providers=["CPUExecutionProvider"])
            for part in ("head", "cloud", "tail")
        }

    def _run(self, part: str, x: np.ndarray) -> np.ndarray:
        return self._sessions[part].run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def head(self, x: np.ndarray) -> np.ndarray:
        return self._run("head", x)

    def cloud(self, z: np.ndarray) -> np.ndarray:
        return self._run("cloud", z)

    def tail(self, z: np.ndarray) -> np.ndarray:
        return self._run("tail", z)


def as_backend(model: Any) -> Backend:
    """A backend as is, or a PyTorch model wrapped in one."""
    return model if isinstance(model, Backend) else TorchBackend(model)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, weights: Path | None = None, onnx_dir: Path | None = None) -> str:
    """``auto``: ONNX Runtime where it is installed (several times faster than PyTorch at batch 1 on a CPU),
    unless a checkpoint is given without its ONNX export; else PyTorch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "onnx" and weights is not None and onnx_dir is None:
        raise ValueError("--runtime onnx runs an ONNX export, not a checkpoint: pass --onnx-dir (made by `fer-train export --weights ...`) instead of --weights")
    if runtime != "auto":
        return runtime
    if onnx_dir is not None or (weights is None and onnxruntime_available()):
        return "onnx"
    return "torch"


def load_backend(runtime: str = "auto", weights: Path | None = None, onnx_dir: Path | None = None, threads: int | None = None) -> Backend:
    """The edge's model: the exported folder under ONNX Runtime, or the checkpoint under PyTorch."""
    if resolve_runtime(runtime, weights, onnx_dir) == "onnx":
        return OnnxBackend(onnx_dir, threads)
    import torch

    from shared_model.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_model(weights)
    return TorchBackend(model)
