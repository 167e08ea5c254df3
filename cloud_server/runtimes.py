"""What computes each served model: PyTorch (any device), or ONNX Runtime on the CPU.

Each model is one batch function, tensor in, tensor out, run by its batcher:

- ``fer_attention``: split tensor -> the attended map packed with the attention
  itself (:class:`~cloud_server.inference.AttentionOutputs`); always PyTorch: it
  costs well under a millisecond and its attention maps are not an ONNX output;
- ``fer_rest``: split tensor -> probabilities (attention and tail);
- ``fer_classifier``: image -> probabilities (the whole network).

On a CPU, ONNX Runtime runs this network 1.8-4x faster than PyTorch at batch 1
(`fer-bench edge-runtimes`, docs/network.md), so ``auto`` picks it there when
it is installed; on CUDA, PyTorch. The ONNX
partitions come from ``fer-train export`` (the package ships the export of the
default weights); their fingerprint must be the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from shared_model.network import FERNet
from shared_model.protocol import ATTENTION_MODEL, CLASSIFIER_MODEL, REST_MODEL

from .inference import AttentionOutputs

RUNTIMES = ("auto", "torch", "onnx")
BatchFunction = Callable[[Tensor], Tensor]


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``auto``: ONNX Runtime on a CPU where it is installed, else PyTorch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError(f"--runtime onnx runs on the CPU; the device is {device}")
    if runtime != "auto":
        return runtime
    from edge_client.backends import onnxruntime_available

    return "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"


def attention_function(model: FERNet, device: torch.device) -> BatchFunction:
    def attention(x: Tensor) -> Tensor:
        x = x.to(device)
        spatial, channel = model.cloud.attention_maps(x)
        return AttentionOutputs(x * spatial * channel[:, :, None, None], spatial, channel).pack().float().cpu()

    return attention


def torch_functions(model: FERNet, device: torch.device) -> dict[str, BatchFunction]:
    def rest(x: Tensor) -> Tensor:
        return model.tail(model.cloud(x.to(device))).softmax(dim=1).float().cpu()

    def classify(x: Tensor) -> Tensor:
        return model(x.to(device)).softmax(dim=1).float().cpu()

    return {ATTENTION_MODEL: attention_function(model, device), REST_MODEL: rest, CLASSIFIER_MODEL: classify}


def onnx_functions(model: FERNet, fingerprint: str, folder: Path | None, threads: int | None) -> dict[str, BatchFunction]:
    """The partitions under ONNX Runtime; refuses an export of other weights."""
    from edge_client.backends import OnnxBackend

    partitions = OnnxBackend(folder, threads)
    if partitions.fingerprint != fingerprint:
        raise ValueError(
            f"the ONNX export holds weights {partitions.fingerprint}, the checkpoint {fingerprint}; "
            "export these weights (`fer-train export --out DIR --parts head,cloud,tail --formats onnx --no-triton`) and pass --onnx-dir DIR"
        )

    def softmax(scores) -> Tensor:  # type: ignore[no-untyped-def]
        return torch.from_numpy(scores).softmax(dim=1)

    def rest(x: Tensor) -> Tensor:
        return softmax(partitions.tail(partitions.cloud(x.numpy())))

    def classify(x: Tensor) -> Tensor:
        return softmax(partitions.tail(partitions.cloud(partitions.head(x.numpy()))))

    return {ATTENTION_MODEL: attention_function(model, torch.device("cpu")), REST_MODEL: rest, CLASSIFIER_MODEL: classify}


def batch_functions(
    model: FERNet, device: torch.device, runtime: str = "auto", fingerprint: str = "", onnx_dir: Path | None = None, threads: int | None = None
) -> tuple[str, dict[str, BatchFunction]]:
    """The runtime actually used and each served model's batch function."""
    chosen = resolve_runtime(runtime, device)
    if chosen == "onnx":
        return chosen, onnx_functions(model, fingerprint, onnx_dir, threads)
    return chosen, torch_functions(model, device)
