"""The CPU default's request path: fer_attention in NumPy (no PyTorch in the process), in inline batches on the event loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fer_bench.loopback import start_server
from test_server_errors import features_request

from cloud_server.batching import LoopBatcher, ThreadBatcher
from shared_model.attention_matrices import NumpyAttention, attention_arrays, export_attention, packed_attention
from shared_model.config import ModelConfig
from shared_model.network import FERNet
from shared_model.protocol import pb_grpc

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(attention=("sfp", "asp")),
        ModelConfig(attention=("asp",), asp_directions=("vertical", "backward_diagonal")),
        ModelConfig(attention=("asp",), asp_directions=("forward_diagonal",)),
        ModelConfig(attention=("sfp",), sfp_wavelet="haar", sfp_levels=(2, 4)),
        ModelConfig(attention=()),
    ],
    ids=["asp-sfp", "sfp-asp", "asp-two-directions", "asp-one-diagonal", "sfp-haar", "none"],
)
@pytest.mark.parametrize("fused", [False, True], ids=["numpy", "fused"])
def test_numpy_attention_equals_pytorch(config: ModelConfig, fused: bool) -> None:
    """Both ways of computing it: a dozen NumPy calls per batch, and one numba-compiled pass per face."""
    model = FERNet(config).eval()
    with torch.no_grad():  # untrained weights are all zeros and ones in places: make every parameter matter
        for parameter in model.cloud.parameters():
            parameter.normal_(0, 0.5)
    x = torch.randn(4, *config.split_shape) * 3
    expected = packed_attention(model, x).numpy()
    attention = NumpyAttention(attention_arrays(model), fused=fused)
    assert attention.fused == fused
    np.testing.assert_allclose(attention(x.numpy()), expected, atol=2e-6, rtol=1e-5)
    spoiled = x.numpy().copy()
    spoiled[1, -1, -1, -1], spoiled[3, 0, 5, 7] = np.inf, np.nan
    flagged = attention(spoiled, finite_flags=True)
    assert flagged[:, -1].tolist() == [1.0, 0.0, 1.0, 0.0]  # the faces holding infinity or NaN, whatever the modules
    np.testing.assert_allclose(flagged[[0, 2], :-1], expected[[0, 2]], atol=2e-6, rtol=1e-5)


def test_lines_that_are_not_rows_columns_and_diagonals_are_computed_by_numpy() -> None:
    """The fused kernel walks ASP's four line families; any other lines (here: the pixels shuffled) fall back to NumPy."""
    model = FERNet(ModelConfig()).eval()
    arrays = attention_arrays(model)
    shuffled = np.random.default_rng(0).permutation(arrays["asp_broadcast_index"].shape[1])
    arrays["asp_broadcast_index"] = arrays["asp_broadcast_index"][:, shuffled]
    for group in ("axis", "diagonal"):
        arrays[f"asp_{group}_matrix"] = arrays[f"asp_{group}_matrix"][shuffled]
    assert not NumpyAttention(arrays).fused
    with pytest.raises(ValueError, match="rows, columns and diagonals"):
        NumpyAttention(arrays, fused=True)


def test_export_refuses_a_folder_of_other_weights(tmp_path: Path, trained_model) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "config": {}, "files": []}))
    with pytest.raises(ValueError, match="0123456789abcdef"):
        export_attention(trained_model, tmp_path, "fedcba9876543210")


def test_the_onnx_runtime_serves_without_importing_torch() -> None:
    """fer-cloud's CPU default (shipped export, ONNX Runtime and NumPy) never loads PyTorch, hundreds of MiB resident."""
    script = (
        "import sys\n"
        "from cloud_server.cli import build_parser\n"
        "from cloud_server.runtimes import load_runtime\n"
        "from cloud_server.engine import InferenceEngine\n"
        "from cloud_server.server import CloudServer, ServerOptions\n"
        "served = load_runtime(None, 'auto', 'auto', None, 1, None)\n"
        "server = CloudServer(InferenceEngine(served), ServerOptions(host='127.0.0.1', port=0))\n"
        "server.start()\n"
        "server.stop_now()\n"
        "print(served.name, sorted(served.inline), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["onnx", "['fer_attention']", "False"]


def test_inline_and_worker_paths_answer_alike(trained_model) -> None:
    """The same request, served by PyTorch on the batcher's thread and by NumPy on the event loop."""
    from fer_bench.loopback import attention_off_the_loop

    servers = [start_server(attention_off_the_loop(trained_model)), start_server(trained_model, runtime="onnx")]
    assert [type(s.engine.batchers["fer_attention"]) for s in servers] == [ThreadBatcher, LoopBatcher]
    data = np.random.default_rng(1).standard_normal(2 * 8 * 28 * 28).astype("<f4").tobytes()
    answers = []
    try:
        for running in servers:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                fp32 = features_request(shape=(2, 8, 28, 28), datatype="FP32", data=data, params={})
                both = features_request(shape=(2, 8, 28, 28), data=bytes(range(256)) * 49)
                both.outputs.add(name="spatial_attention")
                both.outputs.add(name="channel_attention")
                answers.append((stub.ModelInfer(fp32, timeout=10), stub.ModelInfer(both, timeout=10)))
    finally:
        for running in servers:
            running.stop_now()
    (torch_fp32, torch_maps), (inline_fp32, inline_maps) = answers
    np.testing.assert_allclose(np.frombuffer(inline_fp32.raw_output_contents[0], "<f4"), np.frombuffer(torch_fp32.raw_output_contents[0], "<f4"), atol=1e-5)
    assert list(inline_fp32.outputs[0].shape) == [2, 8, 28, 28] and inline_fp32.parameters["batch_size"].int64_param == 2
    for a, b in zip(inline_maps.raw_output_contents, torch_maps.raw_output_contents):  # uint8 maps: equal up to rounding at a boundary
        assert np.abs(np.frombuffer(a, np.uint8).astype(int) - np.frombuffer(b, np.uint8)).max() <= 1
