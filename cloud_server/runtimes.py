"""What computes each served model: the partitions of :mod:`shared_model.runtimes` (ONNX Runtime on a CPU,
or PyTorch on any device), and the attention stage on the CPU where its matrices hold.

Each model is one batch function, NumPy array in, NumPy array out, run by its batcher:

- ``fer_attention``: split tensor -> the attended map packed with the attention
  itself (:class:`~cloud_server.inference.AttentionOutputs`);
- ``fer_rest``: split tensor -> probabilities (attention and tail);
- ``fer_classifier``: image -> probabilities (the whole network).

On a CPU, ONNX Runtime runs this network several times faster than PyTorch at
batch 1, so ``auto`` picks it there when it is installed; on CUDA, PyTorch,
except ``fer_attention``, whose few thousand multiply-adds per face gain nothing
from a GPU's copies and launches (:func:`cpu_attention`). The ONNX partitions
come from an export folder (``fer-train export``, plus ``attention.npz`` from
:mod:`shared_model.attention_matrices`: the attention stage as a few matrices,
run with NumPy; the package ships the export of the default weights), whose
``model.json`` gives the config and the fingerprint: served this way, the
process never imports PyTorch. An export without ``attention.npz`` still works:
``fer_attention`` then runs under PyTorch from the checkpoint.

A :class:`Runtime` also says which models are light enough to compute on the
event loop itself (inline batches, see :mod:`cloud_server.batching`): the
attention stage in NumPy, microseconds per request.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from shared_model.attention_matrices import ATTENTION_FILE, NumpyAttention
from shared_model.config import ModelConfig
from shared_model.protocol import ATTENTION_MODEL, CLASSIFIER_MODEL, REST_MODEL
from shared_model.runtimes import OnnxBackend, resolve_runtime, shipped_onnx_dir, softmax

__all__ = [
    "BatchFunction", "Runtime", "resolve_device", "attention_function", "torch_runtime", "cpu_attention", "onnx_runtime", "load_runtime",
]

log = logging.getLogger(__name__)
BatchFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Runtime:
    """The served models' batch functions and what they were made from."""

    name: str  # "onnx" or "torch"
    device: str
    config: ModelConfig
    fingerprint: str
    functions: dict[str, BatchFunction]
    inline: frozenset[str] = frozenset()  # models computed on the event loop
    model: Any = field(default=None, repr=False)  # the FERNet, when PyTorch holds one
    # Models whose batch output ends with a column of finite flags (1: that row's input held no NaN or
    # infinity): the engine need not check each request's tensor before queueing it.
    checks_finite: frozenset[str] = frozenset()


def _cuda_present() -> bool:
    """Is there a CUDA device? Asked of PyTorch only where a driver exists, so a CPU host never imports it."""
    if not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(name: str) -> str:
    """``auto``: CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return "cuda" if _cuda_present() else "cpu"
    if name.startswith("cuda") and not _cuda_present():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda[:N]")
    return name


def _torch_function(function: Callable[[Any], Any], device: Any) -> BatchFunction:
    """A torch function of a tensor as a batch function of NumPy arrays (on ``device``, without autograd)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.require(x, np.float32, ("C", "W"))).to(device)
            return function(tensor).float().cpu().numpy()

    return run


def attention_function(model: Any, device: Any = "cpu") -> BatchFunction:
    """``fer_attention`` under PyTorch: the packed attended map and attention."""
    import torch

    def attention(x: Any) -> Any:
        spatial, channel = model.cloud.attention_maps(x)
        attended = x * spatial * channel[:, :, None, None]
        return torch.cat([attended.flatten(1), spatial.flatten(1), channel], dim=1)

    return _torch_function(attention, device)


def torch_runtime(model: Any, device: str = "cpu", threads: int | None = None) -> Runtime:
    """Every model under PyTorch on ``device``."""
    import torch

    from shared_model.checkpoint import model_fingerprint

    if threads:
        torch.set_num_threads(threads)
    model = model.eval().to(device)
    attention = cpu_attention(model)
    functions = {
        ATTENTION_MODEL: attention or attention_function(model, device),
        REST_MODEL: _torch_function(lambda x: model.tail(model.cloud(x)).softmax(dim=1), device),
        CLASSIFIER_MODEL: _torch_function(lambda x: model(x).softmax(dim=1), device),
    }
    inline = frozenset({ATTENTION_MODEL}) if attention else frozenset()
    return Runtime("torch", str(device), model.config, model_fingerprint(model), functions, inline, model, checks_finite=inline)


def cpu_attention(model: Any, tolerance: float = 1e-4) -> BatchFunction | None:
    """``fer_attention`` as :class:`NumpyAttention` on the CPU, computed on the event loop, whatever the device.

    The stage is a few thousand multiply-adds per face: a GPU would only add its
    copies and launches. None, with a warning, where the matrices do not
    reproduce PyTorch within ``tolerance`` (then PyTorch computes it on the device).
    """
    import torch

    from shared_model.attention_matrices import attention_arrays, packed_attention

    try:
        attention = NumpyAttention(attention_arrays(model))
    except ValueError as error:
        log.warning("fer_attention runs under PyTorch: %s", error)
        return None
    batch = torch.randn(3, *model.config.split_shape, generator=torch.Generator().manual_seed(0))
    on_cpu = SimpleNamespace(cloud=copy.deepcopy(model.cloud).cpu())  # the reference in FP32 (cuDNN would use TF32)
    reference = packed_attention(on_cpu, batch).numpy()
    error = float(np.abs(attention(batch.numpy()) - reference).max())
    if not error <= tolerance:
        log.warning("fer_attention runs under PyTorch: its matrices differ from PyTorch by %.3g", error)
        return None
    return partial(attention, finite_flags=True)


def onnx_runtime(folder: Path | None = None, threads: int | None = None, model: Any = None) -> Runtime:
    """The partitions of an export under ONNX Runtime; with ``model`` (a FERNet), refuses an export of other weights.

    Without ``attention.npz`` in the export, ``fer_attention`` runs under
    PyTorch: ``model``, or the shipped checkpoint when the export is of the
    shipped weights.
    """
    folder = Path(folder) if folder else shipped_onnx_dir()
    partitions = OnnxBackend(folder, threads)
    if model is not None:
        from shared_model.checkpoint import model_fingerprint

        if (expected := model_fingerprint(model)) != partitions.fingerprint:
            raise ValueError(
                f"the ONNX export holds weights {partitions.fingerprint}, the checkpoint {expected}; "
                "export these weights (`fer-train export --out DIR --parts head,cloud,tail --formats onnx --no-triton`, "
                "then `python -m shared_model.attention_matrices --weights CKPT --out DIR`) and pass --onnx-dir DIR"
            )
    inline: frozenset[str] = frozenset()
    attention: BatchFunction
    if (folder / ATTENTION_FILE).is_file():
        attention = partial(NumpyAttention.load(folder / ATTENTION_FILE), finite_flags=True)
        attention(np.zeros((1, *partitions.config.split_shape), np.float32))  # compiled (or loaded from numba's cache) now, not at the first request
        inline = frozenset({ATTENTION_MODEL})
    else:
        if model is None:
            from shared_model.checkpoint import load_model

            model, checkpoint = load_model()
            if checkpoint.fingerprint != partitions.fingerprint:
                raise ValueError(f"{folder} has no {ATTENTION_FILE} and holds weights {partitions.fingerprint}, not the shipped {checkpoint.fingerprint}; write it with `python -m shared_model.attention_matrices --weights CKPT --out {folder}`")
        log.warning("%s has no %s: fer_attention runs under PyTorch", folder, ATTENTION_FILE)
        attention = attention_function(model.eval(), "cpu")

    def rest(x: np.ndarray) -> np.ndarray:
        return softmax(partitions.tail(partitions.cloud(x)))

    def classify(x: np.ndarray) -> np.ndarray:
        return softmax(partitions.tail(partitions.cloud(partitions.head(x))))

    functions = {ATTENTION_MODEL: attention, REST_MODEL: rest, CLASSIFIER_MODEL: classify}
    return Runtime("onnx", "cpu", partitions.config, partitions.fingerprint, functions, inline, model, checks_finite=inline)


def load_runtime(
    model: Any = None, device: str = "auto", runtime: str = "auto", onnx_dir: Path | None = None, threads: int | None = None, weights: Path | None = None
) -> Runtime:
    """The runtime serving ``model`` (a FERNet), or else the checkpoint ``weights`` or the shipped export.

    ``auto`` on a CPU: ONNX Runtime where installed, unless a checkpoint of its
    own is given without its export (then PyTorch). Nothing here imports
    PyTorch when ONNX Runtime serves an export.
    """
    device = resolve_device(str(device))
    if resolve_runtime(runtime, weights if model is None else None, onnx_dir, device) == "onnx":
        if model is None and weights is not None:
            from shared_model.checkpoint import load_model

            model, _ = load_model(weights)
        return onnx_runtime(onnx_dir, threads, model)
    if model is None:
        try:
            from shared_model.checkpoint import load_model
        except ModuleNotFoundError as missing:
            raise ValueError("the torch runtime needs PyTorch: pip install 'fer-split[full]'") from missing
        model, _ = load_model(weights)
    return torch_runtime(model, device, threads)
