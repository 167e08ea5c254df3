"""Issue 10's wire: requested outputs, the lean split, split-rest, the cloud image size, --private (real server on loopback)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from edge_client.breaker import CircuitBreaker
from edge_client.runner import EdgeRunner
from edge_client.wire_options import WireOptions
from edge_client.transport import CloudClient
from shared_model import codec
from shared_model.checkpoint import model_fingerprint
from shared_model.preprocessing import pixels_to_array
from shared_model.protocol import (
    ATTENTION_MODEL,
    CHANNEL_ATTENTION,
    CLASSIFIER_MODEL,
    FEATURES,
    REST_MODEL,
    SPATIAL_ATTENTION,
    pb,
    read_parameters,
)

PROBABILITY_TOLERANCE = 0.03  # one uint8 quantization step propagated through the tail


@pytest.fixture
def parity_faces_or_sample(sample_face, request) -> list[np.ndarray]:
    """The bundled sample face and its mirror image, plus real FER2013 faces where ../shared/data is present."""
    faces = [sample_face, np.ascontiguousarray(sample_face[:, ::-1])]
    try:
        faces += request.getfixturevalue("fer_faces")
    except pytest.skip.Exception:
        pass
    return faces


@pytest.fixture
def fer_crops() -> list[np.ndarray]:
    from conftest import FER2013

    if not (FER2013 / "public_test").is_dir():
        pytest.skip(f"FER2013 is not at {FER2013}")
    from shared_model.training.datasets import load_image_folder

    return [image.numpy() for image in load_image_folder(FER2013 / "public_test", limit_per_class=3, progress=False).images]


def _client(server, model, timeout_s: float = 5.0) -> CloudClient:
    return CloudClient(f"127.0.0.1:{server.port}", model_fingerprint(model), timeout_s=timeout_s)


def _max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def _split_tensor(model, pixels) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model.head(torch.from_numpy(pixels_to_array(pixels))).numpy()


def _served(server, model_name: str) -> float:
    value = server.engine.metrics.registry.get_sample_value("fer_requests_total", {"model": model_name, "status": "OK"})
    return value or 0.0


@pytest.mark.parametrize(
    "asked, expected",
    [
        ((), [FEATURES]),
        ((CHANNEL_ATTENTION,), [CHANNEL_ATTENTION]),
        ((SPATIAL_ATTENTION, CHANNEL_ATTENTION), [SPATIAL_ATTENTION, CHANNEL_ATTENTION]),
        ((CHANNEL_ATTENTION, FEATURES), [CHANNEL_ATTENTION, FEATURES]),
    ],
)
def test_attention_model_answers_exactly_the_requested_outputs(server, trained_model, sample_face, asked, expected) -> None:
    client = _client(server, trained_model)
    request = client.attention_request(_split_tensor(trained_model, sample_face), codec.UINT8, asked)
    response = client.stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == expected
    assert len(response.raw_output_contents) == len(expected)
    shapes = {o.name: list(o.shape) for o in response.outputs}
    assert shapes.get(SPATIAL_ATTENTION, [1, 1, 28, 28]) == [1, 1, 28, 28]
    assert shapes.get(CHANNEL_ATTENTION, [1, 8]) == [1, 8]
    client.close()


@pytest.mark.parametrize("asked", [("probabilities",), ("nonsense",), (CHANNEL_ATTENTION, CHANNEL_ATTENTION)])
def test_unknown_or_repeated_outputs_are_invalid_argument(server, trained_model, sample_face, asked) -> None:
    client = _client(server, trained_model)
    request = client.attention_request(_split_tensor(trained_model, sample_face), codec.UINT8, asked)
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert asked[0] in caught.value.details()
    assert client.stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live  # still serving
    client.close()


def test_attention_outputs_reproduce_the_attended_map(server, trained_model, sample_face) -> None:
    """x * S * c from the two small outputs equals the features output within their quantization (1/255 each)."""
    client = _client(server, trained_model)
    x = _split_tensor(trained_model, sample_face)
    request = client.attention_request(x, codec.FP32, (FEATURES, SPATIAL_ATTENTION, CHANNEL_ATTENTION))
    call = client.infer(request)
    spatial, channel = call.outputs[SPATIAL_ATTENTION], call.outputs[CHANNEL_ATTENTION]
    assert spatial.shape == (1, 1, 28, 28) and channel.shape == (1, 8)
    assert 0 <= spatial.min() and spatial.max() <= 1 and 0 <= channel.min() and channel.max() <= 1
    rebuilt = x * spatial * channel[:, :, None, None]
    # S and c are each off by at most half a step (1/510) and at most 1: the product is off by at most |x| / 255
    bound = np.abs(x) * (1.0 / 255 + 1e-6) + 1e-6
    assert np.all(np.abs(rebuilt - call.outputs[FEATURES]) <= bound)
    client.close()


def test_lean_split_agrees_with_the_papers_round_trip_and_carries_an_eighth(server, trained_model, parity_faces_or_sample) -> None:
    client = _client(server, trained_model)
    local = EdgeRunner(trained_model)
    lean = EdgeRunner(trained_model, "split", client, timeout_s=5.0)
    paper = EdgeRunner(trained_model, "split", client, wire=WireOptions(split_returns="features"), timeout_s=5.0)
    for pixels in parity_faces_or_sample:
        ours, a, b = local.classify(pixels), lean.classify(pixels), paper.classify(pixels)
        assert a.strategy == b.strategy == "split" and not a.fallback and not b.fallback
        assert _max_difference(ours.probabilities, a.probabilities) <= PROBABILITY_TOLERANCE
        assert _max_difference(a.probabilities, b.probabilities) <= 2 * PROBABILITY_TOLERANCE
        assert a.bytes_down <= 1_100 < 6_272 < b.bytes_down
        assert a.bytes_up > 6_272 and b.bytes_up > 6_272
    client.close()


def test_split_rest_equals_local_within_quantization(server, trained_model, parity_faces_or_sample) -> None:
    client = _client(server, trained_model)
    local = EdgeRunner(trained_model)
    rest = EdgeRunner(trained_model, "split-rest", client, timeout_s=5.0)
    before = _served(server, REST_MODEL)
    for pixels in parity_faces_or_sample:
        ours, theirs = local.classify(pixels), rest.classify(pixels)
        assert theirs.strategy == "split-rest" and not theirs.fallback, theirs.fallback_reason
        assert _max_difference(ours.probabilities, theirs.probabilities) <= PROBABILITY_TOLERANCE
        assert theirs.latency.tail == 0 and theirs.latency.head > 0  # the edge ran only the head
        assert theirs.bytes_down < 300
    assert _served(server, REST_MODEL) - before == len(parity_faces_or_sample)
    client.close()


def test_split_rest_finishes_from_its_own_head_when_the_cloud_is_gone(trained_model, sample_face) -> None:
    from fer_bench.loopback import start_server

    server = start_server(trained_model)
    client = _client(server, trained_model, timeout_s=1.0)
    runner = EdgeRunner(trained_model, "split-rest", client, CircuitBreaker(failure_threshold=100), timeout_s=1.0)
    assert runner.classify(sample_face).strategy == "split-rest"
    server.stop_now()
    result = runner.classify(sample_face)
    assert result.fallback and result.strategy == "edge" and result.fallback_reason in ("unavailable", "timeout")
    assert result.latency.head > 0 and result.latency.tail > 0 and result.label == EdgeRunner(trained_model).classify(sample_face).label
    runner.close()


def test_cloud_sends_the_face_at_the_requested_size(server, trained_model, sample_face) -> None:
    client = _client(server, trained_model)
    sizes = {}
    for side in (48, 112, 224):
        result = EdgeRunner(trained_model, "cloud", client, wire=WireOptions(image_size=side), timeout_s=5.0).classify(sample_face)
        assert result.strategy == "cloud" and not result.fallback
        sizes[side] = result.bytes_up
    assert sizes[48] < sizes[112] < sizes[224]
    client.close()


def test_cloud_sends_the_crop_and_agrees_with_local(server, trained_model, fer_crops) -> None:
    """FER2013 faces as the edge finds them (48x48 crops): sent at their own size, as JPEG by default."""
    from shared_model.preprocessing import prepare_face

    client = _client(server, trained_model)
    local, cloud = EdgeRunner(trained_model), EdgeRunner(trained_model, "cloud", client, timeout_s=5.0)
    agree = 0
    for crop in fer_crops:
        pixels = prepare_face(crop, 224)
        ours, theirs = local.classify(pixels), cloud.classify(pixels, crop)
        assert theirs.strategy == "cloud" and not theirs.fallback
        assert theirs.bytes_up < 3_000  # a 48x48 JPEG (1.2-2.2 KB), not 224x224 (~9 KB)
        agree += ours.label == theirs.label
    assert agree >= len(fer_crops) - 1
    client.close()


def test_private_never_sends_the_face_image(server, trained_model, sample_face) -> None:
    client = _client(server, trained_model)
    with pytest.raises(ValueError, match="private"):
        EdgeRunner(trained_model, "cloud", client, private=True)
    runner = EdgeRunner(trained_model, "auto", client, timeout_s=5.0, private=True)
    before = _served(server, CLASSIFIER_MODEL)
    results = [runner.classify(sample_face) for _ in range(45)]
    assert _served(server, CLASSIFIER_MODEL) == before
    assert {r.auto["choice"] for r in results} <= {"edge", "split", "split-rest"}
    assert {"split", "split-rest"} & {r.auto["choice"] for r in results}  # it did offload
    runner.close()


def test_auto_refuses_a_cloud_with_other_weights_and_answers_locally(trained_model, sample_face) -> None:
    """A cloud holding other weights is found out from ModelMetadata: auto never sends it a face."""
    from fer_bench.loopback import start_server

    from shared_model.network import FERNet

    other = FERNet(trained_model.config)
    server = start_server(other)
    try:
        runner = EdgeRunner(trained_model, "auto", _client(server, trained_model), timeout_s=5.0)
        first = runner.classify(sample_face)  # asks ModelMetadata in the background
        assert first.strategy == "edge" and runner.wait_for_discovery()
        assert runner.planner.candidates == ["edge"]
        results = [runner.classify(sample_face) for _ in range(5)]
        assert all(r.strategy == "edge" and not r.fallback for r in results)
        assert sum(_served(server, m) for m in (ATTENTION_MODEL, REST_MODEL, CLASSIFIER_MODEL)) == 0
        runner.close()
    finally:
        server.stop_now()


def test_a_fixed_strategy_never_sends_to_a_cloud_with_other_weights(trained_model, sample_face) -> None:
    from fer_bench.loopback import start_server

    from shared_model.network import FERNet

    server = start_server(FERNet(trained_model.config))
    try:
        runner = EdgeRunner(trained_model, "split-rest", _client(server, trained_model), timeout_s=5.0)
        runner.classify(sample_face)
        assert runner.wait_for_discovery()
        results = [runner.classify(sample_face) for _ in range(3)]
        assert all(r.strategy == "edge" and r.fallback_reason == "version_mismatch" for r in results)
        assert _served(server, REST_MODEL) == 0
        runner.close()
    finally:
        server.stop_now()


def test_metadata_lists_the_attention_outputs_and_the_fingerprint(server, trained_model) -> None:
    client = _client(server, trained_model)
    meta = client.model_metadata(ATTENTION_MODEL)
    assert [o.name for o in meta.outputs] == [FEATURES, SPATIAL_ATTENTION, CHANNEL_ATTENTION]
    assert read_parameters(meta.parameters)["fingerprint"] == model_fingerprint(trained_model)
    rest = client.model_metadata(REST_MODEL)
    assert [o.name for o in rest.outputs] == ["probabilities"] and list(rest.outputs[0].shape) == [-1, 7]
    client.close()


def test_onnx_runtime_engine_answers_as_pytorch_does(trained_model, sample_face) -> None:
    """fer_rest and fer_classifier computed by ONNX Runtime (the shipped export) agree with PyTorch's."""
    from fer_bench.loopback import start_server

    from cloud_server.engine import InferenceEngine

    torch_server, onnx_server = start_server(trained_model), start_server(trained_model, runtime="onnx")
    try:
        assert onnx_server.engine.runtime == "onnx" and torch_server.engine.runtime == "torch"
        for strategy, options in (("split-rest", {}), ("cloud", {"image_format": "png", "image_size": None})):
            a = EdgeRunner(trained_model, strategy, _client(torch_server, trained_model), wire=WireOptions(**options)).classify(sample_face)
            b = EdgeRunner(trained_model, strategy, _client(onnx_server, trained_model), wire=WireOptions(**options)).classify(sample_face)
            assert a.strategy == b.strategy == strategy and not b.fallback
            assert _max_difference(a.probabilities, b.probabilities) < 1e-4
    finally:
        torch_server.stop_now()
        onnx_server.stop_now()
    from shared_model.network import FERNet

    with pytest.raises(ValueError, match="ONNX export holds weights"):
        InferenceEngine(FERNet(trained_model.config), runtime="onnx")


def test_the_pytorch_runtime_computes_the_attention_on_the_cpu_inline_as_pytorch_does(trained_model) -> None:
    """Under PyTorch (CPU or CUDA) fer_attention is the matrices on the event loop, with finite flags, equal to PyTorch's attention."""
    import torch

    from cloud_server.runtimes import torch_runtime
    from shared_model.attention_matrices import packed_attention

    runtime = torch_runtime(trained_model)
    assert ATTENTION_MODEL in runtime.inline and ATTENTION_MODEL in runtime.checks_finite
    assert REST_MODEL not in runtime.inline
    x = np.random.default_rng(3).normal(0, 1, (4, *trained_model.config.split_shape)).astype(np.float32)
    x[2, 5, 7, 9] = np.nan
    answer = runtime.functions[ATTENTION_MODEL](x)
    assert answer[:, -1].tolist() == [1.0, 1.0, 0.0, 1.0]  # the finite flag of each face
    finite = [0, 1, 3]
    reference = packed_attention(trained_model, torch.from_numpy(x[finite])).numpy()
    assert np.abs(answer[finite, :-1] - reference).max() < 1e-5


def test_an_attention_stage_the_matrices_cannot_express_runs_under_pytorch(trained_model, caplog) -> None:
    """A second channel-attention module (no known name): the matrices refuse it, so PyTorch computes fer_attention, off the loop."""
    import copy

    import torch

    from cloud_server.runtimes import torch_runtime
    from shared_model.attention_matrices import packed_attention

    model = copy.deepcopy(trained_model)
    model.cloud.attention["sfp_again"] = copy.deepcopy(model.cloud.attention["sfp"])
    runtime = torch_runtime(model)
    assert ATTENTION_MODEL not in runtime.inline and "fer_attention runs under PyTorch" in caplog.text
    x = np.random.default_rng(4).normal(0, 1, (2, *model.config.split_shape)).astype(np.float32)
    assert np.abs(runtime.functions[ATTENTION_MODEL](x) - packed_attention(model, torch.from_numpy(x)).numpy()).max() < 1e-6
