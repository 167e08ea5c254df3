"""What runs the network's partitions: PyTorch, or ONNX Runtime where torch is absent.

Edge and cloud both run partitions through a :class:`Backend`, NumPy arrays in
and out: ``head`` (N, 3, S, S) -> split tensor, ``cloud`` split -> attended
split, ``tail`` -> class scores. The ONNX backend reads a folder written by
``fer-train export`` (``head.onnx``, ``cloud.onnx``, ``tail.onnx`` and
``model.json`` with the config and the fingerprint of the checkpoint it came
from); the package ships one for the default weights (``onnx_model/``).

Nothing here imports torch until a PyTorch backend is made.
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
    "resolve_runtime", "load_backend", "softmax",
]

RUNTIMES = ("auto", "torch", "onnx")


def softmax(scores: np.ndarray) -> np.ndarray:
    """Class probabilities (float32) from class scores, along the last axis."""
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)


class Backend(ABC):
    """The three partitions of one set of weights, on NumPy arrays."""

    config: ModelConfig
    fingerprint: str

    @abstractmethod
    def head(self, x: np.ndarray) -> np.ndarray:
        """Prepared images (N, 3, S, S) -> split tensors."""

    @abstractmethod
    def cloud(self, z: np.ndarray) -> np.ndarray:
        """Split tensors -> attended split tensors."""

    @abstractmethod
    def tail(self, z: np.ndarray) -> np.ndarray:
        """Attended split tensors -> class scores."""


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
    """The ONNX export of the shipped weights."""
    return Path(str(resources.files("shared_model") / "onnx_model"))


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
        # Worker threads that spin after each run wait for the next one on a core of their own: with a
        # session per partition, three pools spin on the same few cores and slow each other down.
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
    """Is ONNX Runtime installed?"""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, weights: Path | None = None, onnx_dir: Path | None = None, device: str = "cpu") -> str:
    """``torch`` or ``onnx`` for ``runtime`` (one of :data:`RUNTIMES`) on ``device``.

    ``auto``: ONNX Runtime on a CPU (several times faster than PyTorch there at batch 1): for an export
    folder, or for the shipped weights where ONNX Runtime is installed. PyTorch on any other device, and
    for a checkpoint of its own (``weights``) given without its export. ONNX Runtime runs on the CPU only.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    device = str(device)
    if runtime == "onnx" and device != "cpu":
        raise ValueError(f"--runtime onnx runs on the CPU; the device is {device}")
    if runtime != "auto":
        return runtime
    if device != "cpu" or (weights is not None and onnx_dir is None):
        return "torch"
    return "onnx" if onnx_dir is not None or onnxruntime_available() else "torch"


def load_backend(runtime: str = "auto", weights: Path | None = None, onnx_dir: Path | None = None, threads: int | None = None) -> Backend:
    """The partitions on this CPU: the exported folder under ONNX Runtime, or the checkpoint under PyTorch.

    ``--runtime onnx`` with a checkpoint and no export is refused (it would run other weights).
    """
    if runtime == "onnx" and weights is not None and onnx_dir is None:
        raise ValueError("--runtime onnx runs an ONNX export, not a checkpoint: pass --onnx-dir (made by `fer-train export --weights ...`) instead of --weights")
    if resolve_runtime(runtime, weights, onnx_dir) == "onnx":
        return OnnxBackend(onnx_dir, threads)
    import torch

    from shared_model.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_model(weights)
    return TorchBackend(model)
