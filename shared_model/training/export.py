"""Export to other serving engines: ONNX and TorchScript for each partition, a Triton model repository.

Every exported file is checked against PyTorch on a random batch (onnxruntime
for ONNX, ``torch.jit.load`` for TorchScript) before it is reported as written.
The Triton repository serves the cloud stage as ``fer_attention`` with dynamic
batching, so an existing engine speaking the same protocol can host it; its
inputs and outputs are FP32 (Triton does no affine dequantization itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..network import FERNet

PARTS = ("cloud", "head", "tail", "whole")
FORMATS = ("onnx", "torchscript")
OPSET = 17


class ExportError(RuntimeError):
    """An export that failed or does not reproduce PyTorch's numbers."""


@dataclass
class ExportedFile:
    part: str
    format: str
    path: Path
    max_abs_error: float


def _module_and_input(model: FERNet, part: str, batch: int = 1) -> tuple[nn.Module, torch.Tensor]:
    size = model.config.input_size
    split = (batch, *model.config.split_shape)
    return {
        "cloud": (model.cloud, torch.randn(split)),
        "head": (model.head, torch.randn(batch, 3, size, size)),
        "tail": (model.tail, torch.randn(split)),
        "whole": (model, torch.randn(batch, 3, size, size)),
    }[part]


def _check(reference: nn.Module, run: Callable[[torch.Tensor], np.ndarray], example: torch.Tensor, tolerance: float) -> float:
    with torch.no_grad():
        expected = reference(example).numpy()
    error = float(np.abs(run(example) - expected).max())
    if not error <= tolerance:
        raise ExportError(f"exported model differs from PyTorch by {error:.3g} (> {tolerance})")
    return error


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, tolerance: float = 1e-4) -> float:
    """Write ONNX with a dynamic batch dimension; check it with onnxruntime on a batch of 3."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError("ONNX export needs `pip install 'fer-split[export]'` (onnx, onnxruntime)") from error
    with torch.no_grad():
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(3, *example.shape[1:])
    return _check(module, lambda x: session.run(None, {"input": x.numpy()})[0], batch, tolerance)


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, tolerance: float = 1e-5) -> float:
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    batch = torch.randn(3, *example.shape[1:])
    return _check(module, lambda x: loaded(x).detach().numpy(), batch, tolerance)


def triton_repository(model: FERNet, onnx_cloud: Path, root: Path, fingerprint: str, max_batch_size: int = 32, max_queue_delay_us: int = 2000) -> Path:
    """``root/fer_attention/{config.pbtxt, 1/model.onnx}`` for Triton's ONNX Runtime backend."""
    folder = root / "fer_attention"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_cloud.read_bytes())
    dims = ", ".join(str(d) for d in model.config.split_shape)
    (folder / "config.pbtxt").write_text(
        f'''name: "fer_attention"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [ {{ name: "input", data_type: TYPE_FP32, dims: [ {dims} ] }} ]
output [ {{ name: "output", data_type: TYPE_FP32, dims: [ {dims} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
instance_group [ {{ kind: KIND_AUTO }} ]
parameters {{ key: "fingerprint" value: {{ string_value: "{fingerprint}" }} }}
'''
    )
    return folder


def export_all(checkpoint: Checkpoint, out: Path, parts: tuple[str, ...] = PARTS, formats: tuple[str, ...] = FORMATS, triton: bool = True) -> list[ExportedFile]:
    """Export the chosen partitions in the chosen formats (and the Triton repository); all checked."""
    out.mkdir(parents=True, exist_ok=True)
    model = checkpoint.build_model()
    exported = []
    for part in parts:
        module, example = _module_and_input(model, part)
        for fmt in formats:
            path = out / f"{part}.{'onnx' if fmt == 'onnx' else 'pt'}"
            error = export_onnx(module, example, path) if fmt == "onnx" else export_torchscript(module, example, path)
            exported.append(ExportedFile(part, fmt, path, error))
    if triton and "cloud" in parts and "onnx" in formats:
        triton_repository(model, out / "cloud.onnx", out / "triton", checkpoint.fingerprint)
    (out / "model.json").write_text(json.dumps({"fingerprint": checkpoint.fingerprint, "config": model.config.to_dict(), "files": [{"part": e.part, "format": e.format, "file": e.path.name, "max_abs_error": e.max_abs_error} for e in exported]}, indent=2))
    return exported
