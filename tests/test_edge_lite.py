"""The torch-free edge: ONNX Runtime runs the head and tail with the same results as PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX runtime comes with the edge-lite or export extra")

from edge_client.cli import sample_image  # noqa: E402
from edge_client.runner import EdgeRunner  # noqa: E402
from edge_client.transport import CloudClient  # noqa: E402
from shared_model.checkpoint import default_weights_path, load_checkpoint  # noqa: E402
from shared_model.runtimes import OnnxBackend, TorchBackend  # noqa: E402

TOLERANCE = 1e-4


def _max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def test_shipped_onnx_export_matches_the_shipped_weights() -> None:
    assert OnnxBackend().fingerprint == load_checkpoint(default_weights_path()).fingerprint, (
        "regenerate: fer-train export --out shared_model/onnx_model --parts head,cloud,tail --formats onnx --no-triton"
    )


def test_onnx_and_torch_edges_agree_locally_and_split(server, trained_model, sample_face) -> None:
    onnx, torch_backend = OnnxBackend(), TorchBackend(trained_model)
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(onnx.head(x), torch_backend.head(x), atol=1e-4)
    local_onnx = EdgeRunner(onnx).classify(sample_face)
    local_torch = EdgeRunner(torch_backend).classify(sample_face)
    assert local_onnx.label == local_torch.label and _max_difference(local_onnx.probabilities, local_torch.probabilities) < TOLERANCE
    client = CloudClient(f"127.0.0.1:{server.port}", onnx.fingerprint, timeout_s=5)
    split = EdgeRunner(onnx, "split", client).classify(sample_face)
    assert split.strategy == "split" and not split.fallback, split.fallback_reason


def test_edge_runs_in_an_environment_without_torch(server, trained_model, sample_face) -> None:
    python = os.environ.get("FER_LITE_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("FER_LITE_PYTHON is not set: scripts/test.sh makes a virtual environment with only the edge-lite extra")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0, "the lite environment must not have torch"
    expected = EdgeRunner(trained_model).classify(sample_face)
    for extra in ([], ["--cloud", f"127.0.0.1:{server.port}", "--strategy", "split"]):
        done = subprocess.run([python, "-m", "edge_client.cli", "run", str(sample_image()), "--runtime", "onnx", "--json", *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        assert record["strategy"] == ("split" if extra else "edge") and not record["fallback"]
        assert record["label"] == expected.label
        assert _max_difference(record["probabilities"], expected.probabilities) < (0.03 if extra else TOLERANCE)
