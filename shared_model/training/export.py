"""Export to other serving engines: ONNX and TorchScript for each partition, a Triton model repository.

Every exported file is checked against PyTorch on a random batch (onnxruntime
for ONNX, ``torch.jit.load`` for TorchScript) before it is reported as written.
The Triton repository (:func:`triton_repository`) serves ``fer_attention``,
``fer_rest`` and ``fer_classifier`` with dynamic batching, so an existing engine
speaking the same protocol can host the cloud: by default through Triton's
Python backend (the model file is ``deploy/triton/model.py`` of the project's
source tree: ONNX Runtime inside, UINT8 split tensors as the edge sends them),
or through Triton's ONNX Runtime backend (FP32/FP16 only: it does no affine
dequantization) for GPU images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..attention_matrices import ATTENTION_FILE, write_attention
from ..checkpoint import Checkpoint
from ..network import FERNet
from ..preprocessing import normalize
from ..protocol import (
    ATTENTION_MODEL,
    CHANNEL_ATTENTION,
    CLASS_NAMES,
    CLASSIFIER_MODEL,
    FEATURES,
    FINGERPRINT,
    IMAGE,
    PROBABILITIES,
    REST_MODEL,
    SPATIAL_ATTENTION,
)

__all__ = [
    "PARTS", "FORMATS", "OPSET", "ExportError", "ExportedFile", "export_onnx", "export_torchscript", "AttentionWithMaps", "AttentionMaps",
    "Probabilities", "PixelsToProbabilities", "TRITON_BACKENDS", "TRITON_FEATURES", "TRITON_FOLDER", "TRITON_MODEL_FILE", "TritonSettings", "triton_config",
    "triton_repository", "triton_model_source", "export_all",
]

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


class AttentionWithMaps(nn.Module):
    """``fer_attention`` as one graph: the attended map ``x * S * c``, S (N, 1, H, W) and c (N, C)."""

    def __init__(self, cloud: nn.Module) -> None:
        super().__init__()
        self.cloud = cloud

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spatial, channel = self.cloud.attention_maps(x)
        return x * spatial * channel[:, :, None, None], spatial, channel


class AttentionMaps(nn.Module):
    """The attention alone, S (N, 1, H, W) and c (N, C): ``fer_attention`` for engines that run ONNX as is."""

    def __init__(self, cloud: nn.Module) -> None:
        super().__init__()
        self.cloud = cloud

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cloud.attention_maps(x)


class Probabilities(nn.Sequential):
    """A partition chain followed by softmax: ``fer_rest`` (attention, tail) or ``fer_classifier`` (whole network)."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__(*modules, nn.Softmax(dim=1))


class PixelsToProbabilities(nn.Module):
    """``fer_classifier`` on raw pixels for engines that cannot decode images: uint8 (N, S, S, 3) -> probabilities."""

    def __init__(self, model: FERNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        return self.model(normalize(x)).softmax(dim=1)


TRITON_BACKENDS = ("python", "onnxruntime")
TRITON_FEATURES = ("uint8", "fp32", "fp16")
_TRITON_TYPES = {"uint8": "TYPE_UINT8", "fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
# The Python backend's models live in the source tree (deploy/triton), not in the installed package.
TRITON_FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "triton"
TRITON_MODEL_FILE = TRITON_FOLDER / "model.py"  # the project's full model


@dataclass(frozen=True)
class TritonSettings:
    """How the generated Triton repository serves the models.

    ``backend``: ``python`` (this project's model code with ONNX Runtime inside:
    UINT8 split tensors with ``scale``/``zero_point``, encoded images, requested
    outputs) or ``onnxruntime`` (Triton's own ONNX Runtime backend, for GPU
    images: FP32 split tensors only, raw pixels for ``fer_classifier``). ``features``:
    the datatype of the split tensor (Triton accepts one per input).
    ``max_queue_delay_us`` 0 batches only what is already waiting.
    """

    backend: str = "python"
    features: str = "uint8"
    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    instances: int = 1
    device: str = "cpu"  # cpu or gpu: the instance kind
    threads: int = 1  # ONNX Runtime threads per instance (python backend)
    dynamic_batching: bool = True  # off: each request runs alone (for comparisons)

    def __post_init__(self) -> None:
        if self.backend not in TRITON_BACKENDS:
            raise ValueError(f"unknown Triton backend {self.backend!r}; expected one of {TRITON_BACKENDS}")
        if self.features not in TRITON_FEATURES:
            raise ValueError(f"unknown features datatype {self.features!r}; expected one of {TRITON_FEATURES}")
        if self.backend == "onnxruntime" and self.features != "fp32":
            raise ValueError("Triton's onnxruntime backend takes FP32 features only (it cannot dequantize): use --triton-features fp32")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"unknown device {self.device!r}; expected cpu or gpu")


def _triton_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str], tolerance: float = 1e-4) -> float:
    """An ONNX file for one served model (dynamic batch), checked with onnxruntime on a batch of 3."""
    import onnxruntime

    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=[input_name], output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *output_names]},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if example.dtype == torch.uint8:
        batch = torch.randint(0, 256, (3, *example.shape[1:]), dtype=torch.uint8)
    else:
        batch = torch.randn(3, *example.shape[1:])
    with torch.no_grad():
        expected = module(batch)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {input_name: batch.numpy()})
    error = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    if not error <= tolerance:
        raise ExportError(f"{path.name} differs from PyTorch by {error:.3g} (> {tolerance})")
    return error


def _pbtxt_tensors(tensors: list[tuple[str, str, list[int]]]) -> str:
    return ",\n".join(f'  {{ name: "{name}", data_type: {dtype}, dims: [ {", ".join(map(str, dims))} ] }}' for name, dtype, dims in tensors)


def triton_config(
    name: str, settings: TritonSettings, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]],
    parameters: dict[str, str], batching: bool = True,
) -> str:
    """A model's ``config.pbtxt`` (tensors as (name, type, dims)); without ``batching`` the shapes are given whole (``max_batch_size: 0``)."""
    params = "\n".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in parameters.items())
    kind = "KIND_GPU" if settings.device == "gpu" else "KIND_CPU"
    scheduling = f"dynamic_batching {{ max_queue_delay_microseconds: {settings.max_queue_delay_us} }}\n" if batching and settings.dynamic_batching else ""
    return (
        f'name: "{name}"\nbackend: "{settings.backend}"\nmax_batch_size: {settings.max_batch_size if batching else 0}\n'
        f"input [\n{_pbtxt_tensors(inputs)}\n]\noutput [\n{_pbtxt_tensors(outputs)}\n]\n{scheduling}"
        f"instance_group [ {{ kind: {kind}, count: {settings.instances} }} ]\n{params}\n"
    )


def triton_repository(model: FERNet, root: Path, fingerprint: str, settings: TritonSettings | None = None, models: tuple[str, ...] = ()) -> list[Path]:
    """A Triton model repository under ``root``: ``fer_attention``, ``fer_rest``, ``fer_classifier``.

    Each model folder holds ``config.pbtxt`` (dynamic batching, except the Python
    backend's ``fer_classifier``, which takes BYTES ``[N]`` as sent and so whole
    shapes; the fingerprint as a ``parameters`` entry: Triton's ModelConfig RPC
    returns it) and
    ``1/model.onnx``, checked against PyTorch. With the Python backend also
    ``1/model.py``, a copy of :data:`TRITON_MODEL_FILE`. With the ONNX
    Runtime backend, ``fer_attention`` and ``fer_rest`` take FP32 features and
    ``fer_classifier`` uint8 pixels ``[N, S, S, 3]``; ``fer_attention`` answers
    the attention only (FP32 ``spatial_attention``, ``channel_attention``), since
    an ONNX graph cannot name an input and an output alike (``features``).
    ``models``: only these (default: all three). Returns the model folders.
    """
    settings = settings or TritonSettings()
    source = triton_model_source().read_text() if settings.backend == "python" else ""
    model = model.eval()
    config = model.config
    split = list(config.split_shape)
    channels, height, width = split
    size = config.input_size
    python = settings.backend == "python"
    features = _TRITON_TYPES[settings.features]
    parameters = {FINGERPRINT: fingerprint, CLASS_NAMES: ",".join(config.class_names), "input_size": str(size)}
    split_example = torch.randn(1, *split)
    probabilities = [(PROBABILITIES, "TYPE_FP32", [config.num_classes])]
    attention = [(FEATURES, features, split)]
    folders = []

    def write(name: str, module: nn.Module, example: torch.Tensor, inputs: list, outputs: list, onnx_names: tuple[str, list[str]] | None = None, batching: bool = True) -> None:
        if models and name not in models:
            return
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        input_name, output_names = onnx_names or (inputs[0][0], [o[0] for o in outputs])
        _triton_onnx(module, example, folder / "1" / "model.onnx", input_name, output_names)
        if python:
            (folder / "1" / "model.py").write_text(source)
        (folder / "config.pbtxt").write_text(triton_config(name, settings, inputs, outputs, parameters, batching))
        folders.append(folder)

    if python:
        parameters["threads"] = str(settings.threads)
        attention_outputs = [(FEATURES, features, split), (SPATIAL_ATTENTION, "TYPE_UINT8", [1, height, width]), (CHANNEL_ATTENTION, "TYPE_UINT8", [channels])]
        write(ATTENTION_MODEL, AttentionWithMaps(model.cloud), split_example, attention, attention_outputs, ("input", ["output0", "output1", "output2"]))
        write(REST_MODEL, Probabilities(model.cloud, model.tail), split_example, attention, probabilities, ("input", ["output0"]))
        # BYTES [N]: a batching model would need [N, 1] on the wire, so this one takes whole shapes, one request at a time
        write(CLASSIFIER_MODEL, Probabilities(model), torch.randn(1, 3, size, size), [(IMAGE, "TYPE_STRING", [-1])], [(PROBABILITIES, "TYPE_FP32", [-1, config.num_classes])], ("input", ["output0"]), batching=False)
        return folders
    maps = [(SPATIAL_ATTENTION, "TYPE_FP32", [1, height, width]), (CHANNEL_ATTENTION, "TYPE_FP32", [channels])]
    write(ATTENTION_MODEL, AttentionMaps(model.cloud), split_example, attention, maps)
    write(REST_MODEL, Probabilities(model.cloud, model.tail), split_example, attention, probabilities)
    pixels = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
    write(CLASSIFIER_MODEL, PixelsToProbabilities(model), pixels, [(IMAGE, "TYPE_UINT8", [size, size, 3])], probabilities)
    return folders


def triton_model_source() -> Path:
    """:data:`TRITON_MODEL_FILE`, which the repository's ``model.py`` files copy; :class:`ExportError` where it is absent."""
    if not TRITON_MODEL_FILE.is_file():
        raise ExportError(
            f"no Triton model at {TRITON_MODEL_FILE}: the Python backend's model is read from the project's source tree "
            "(deploy/triton); export from a checkout (pip install -e .) or use --triton-backend onnxruntime"
        )
    return TRITON_MODEL_FILE


def export_all(
    checkpoint: Checkpoint, out: Path, parts: tuple[str, ...] = PARTS, formats: tuple[str, ...] = FORMATS, triton: bool = True,
    triton_settings: TritonSettings | None = None,
) -> list[ExportedFile]:
    """Export the chosen partitions in the chosen formats (and the Triton repository under ``out/triton``); all checked."""
    out.mkdir(parents=True, exist_ok=True)
    model = checkpoint.build_model()
    exported = []
    for part in parts:
        module, example = _module_and_input(model, part)
        for fmt in formats:
            path = out / f"{part}.{'onnx' if fmt == 'onnx' else 'pt'}"
            error = export_onnx(module, example, path) if fmt == "onnx" else export_torchscript(module, example, path)
            exported.append(ExportedFile(part, fmt, path, error))
    if triton:
        triton_repository(model, out / "triton", checkpoint.fingerprint, triton_settings)
    if "cloud" in parts:  # fer-cloud's torch-free fer_attention
        exported.append(ExportedFile("attention", "npz", out / ATTENTION_FILE, write_attention(model, out / ATTENTION_FILE)))
    (out / "model.json").write_text(json.dumps({"fingerprint": checkpoint.fingerprint, "config": model.config.to_dict(), "files": [{"part": e.part, "format": e.format, "file": e.path.name, "max_abs_error": e.max_abs_error} for e in exported]}, indent=2))
    return exported
