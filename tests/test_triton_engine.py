"""The cloud hosted by a real Triton Inference Server: the edge and tritonclient work against it unchanged.

``fer-train export --triton`` writes the repository (Python backend, ONNX
Runtime inside); the ``tritonserver`` of the ``nvidia-pytriton`` wheel serves it
on loopback (``scripts/test.sh`` installs it into ``.venv-triton``). The tests
skip, saying so, only where that server is not installed. One server per module
(its start costs a few seconds), stopped with its backend stubs at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_bench.triton_server import TritonServer, TritonUnavailable, find_tritonserver

try:
    TRITONSERVER = find_tritonserver()
except TritonUnavailable as reason:
    pytest.skip(f"Triton Inference Server is not installed: {reason}", allow_module_level=True)
pytest.importorskip("onnxruntime", reason="the Triton repository is exported with the export extra (onnx, onnxruntime)")

import grpc  # noqa: E402

from edge_client.breaker import CircuitBreaker  # noqa: E402
from edge_client.cli import main as edge_main  # noqa: E402
from edge_client.runner import EdgeRunner  # noqa: E402
from edge_client.wire_options import WireOptions  # noqa: E402
from edge_client.transport import CloudClient  # noqa: E402
from shared_model import codec  # noqa: E402
from shared_model.checkpoint import load_checkpoint, default_weights_path, model_fingerprint  # noqa: E402
from shared_model.network import FERNet  # noqa: E402
from shared_model.protocol import (  # noqa: E402
    ATTENTION_MODEL,
    CHANNEL_ATTENTION,
    CLASSIFIER_MODEL,
    FEATURES,
    REST_MODEL,
    SPATIAL_ATTENTION,
    pb,
    pb_grpc,
    set_parameters,
)
from shared_model.training.cli import main as train_main  # noqa: E402
from shared_model.training.export import triton_repository  # noqa: E402

MODELS = (ATTENTION_MODEL, REST_MODEL, CLASSIFIER_MODEL)
FACES = Path(__file__).parent / "data" / "faces"
STRATEGIES = ("edge", "cloud", "split", "split-rest", "auto")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The repository as users make it: ``fer-train export --triton`` from the shipped weights."""
    out = tmp_path_factory.mktemp("export")
    assert train_main(["export", "--out", str(out), "--triton", "--parts", "cloud", "--formats", "onnx"]) == 0
    return out / "triton"


@pytest.fixture(scope="module")
def triton(repository):
    server = TritonServer(repository)
    try:
        server.start(models=MODELS)
    except TritonUnavailable:
        server.close()
        raise
    yield server
    pids = server.pids()
    server.close()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"], "tritonserver or a stub outlived stop()"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _edge(capsys, *args: str) -> list[dict]:
    assert edge_main(["run", str(FACES), "--json", "--no-progress", "--whole-image", "--threads", "1", *args]) == 0
    return _records(capsys)


def _max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def test_the_exported_repository_holds_the_three_models_with_the_fingerprint(repository) -> None:
    fingerprint = load_checkpoint(default_weights_path()).fingerprint
    for name in MODELS:
        config = (repository / name / "config.pbtxt").read_text()
        assert 'backend: "python"' in config and ("dynamic_batching" in config) == (name != CLASSIFIER_MODEL)
        assert f'key: "fingerprint" value: {{ string_value: "{fingerprint}" }}' in config
        assert (repository / name / "1" / "model.py").is_file() and (repository / name / "1" / "model.onnx").stat().st_size > 0
    assert "TYPE_UINT8" in (repository / ATTENTION_MODEL / "config.pbtxt").read_text()
    assert "TYPE_STRING" in (repository / CLASSIFIER_MODEL / "config.pbtxt").read_text()


def test_fer_edge_gets_every_strategy_from_triton_with_no_fallback(triton, capsys) -> None:
    local = _edge(capsys)
    assert len(local) == len(list(FACES.glob("*.png"))) and all(r["strategy"] == "edge" for r in local)
    for strategy in STRATEGIES:
        records = _edge(capsys, "--cloud", triton.target, "--strategy", strategy, "--timeout-ms", "5000")
        assert [r["source"] for r in records] == [r["source"] for r in local]
        assert not [r for r in records if r["fallback"]], f"{strategy}: {[r['fallback_reason'] for r in records if r['fallback']]}"
        if strategy != "auto":
            assert {r["strategy"] for r in records} == {strategy}
        else:
            assert {r["auto"]["choice"] for r in records} <= {"edge", "cloud", "split", "split-rest"}
        for got, expected in zip(records, local):
            # the same weights; the split tensor is quantized to uint8, the cloud strategy sends a JPEG
            tolerance = 0.1 if strategy == "cloud" else 0.03
            assert _max_difference(got["probabilities"], expected["probabilities"]) < tolerance, strategy
            if strategy in ("split", "split-rest"):
                assert got["label"] == expected["label"]


def test_triton_answers_as_fer_cloud_does(triton, server, trained_model, bundled_faces) -> None:
    """Both engines, the same edge requests: equal answers within float rounding (both see the same uint8 tensor)."""
    fingerprint = model_fingerprint(trained_model)
    for strategy, options in (("split", {}), ("split", {"split_returns": "features"}), ("split-rest", {}), ("cloud", {})):
        answers = []
        for target in (triton.target, f"127.0.0.1:{server.port}"):
            runner = EdgeRunner(trained_model, strategy, CloudClient(target, fingerprint, timeout_s=5.0), wire=WireOptions(**options), timeout_s=5.0)
            answers.append([runner.classify(face) for face in bundled_faces])
            runner.close()
        for on_triton, on_cloud in zip(*answers):
            assert on_triton.strategy == on_cloud.strategy == strategy and not on_triton.fallback and not on_cloud.fallback
            tolerance = 0.02 if options else 1e-3  # the paper's return quantizes the attended map with another scale
            assert _max_difference(on_triton.probabilities, on_cloud.probabilities) < tolerance, (strategy, options)


def test_a_video_stream_is_served_by_triton(triton, trained_model, bundled_faces) -> None:
    client = CloudClient(triton.target, model_fingerprint(trained_model), timeout_s=5.0)
    runner = EdgeRunner(trained_model, "split", client, timeout_s=5.0, use_stream=True)
    results = [runner.classify(face) for face in bundled_faces]
    runner.close()
    assert all(r.strategy == "split" and not r.fallback for r in results)


def test_the_handshake_reads_the_fingerprint_from_the_model_config(triton, trained_model) -> None:
    client = CloudClient(triton.target, model_fingerprint(trained_model), timeout_s=5.0)
    metadata = client.model_metadata(ATTENTION_MODEL)
    assert list(metadata.versions) == ["1"] and not metadata.parameters  # Triton: integer versions, no parameters
    assert client.model_config_parameters(ATTENTION_MODEL)["fingerprint"] == model_fingerprint(trained_model)
    runner = EdgeRunner(trained_model, "split-rest", client, timeout_s=5.0)
    assert runner.classify(np.zeros((224, 224, 3), np.uint8)).strategy == "split-rest"
    assert client.engine_versions == {REST_MODEL: "1"}
    runner.close()


def _stub(triton) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(triton.target)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _features_request(features: np.ndarray, scale: float, zero_point: int, outputs: tuple[str, ...] = (), model: str = ATTENTION_MODEL) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=FEATURES, datatype="UINT8", shape=list(features.shape))
    set_parameters(request.parameters, {"scale": scale, "zero_point": zero_point})
    request.raw_input_contents.append(features.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


@pytest.mark.parametrize(
    "asked, answered",
    [
        ((), [FEATURES]),
        ((SPATIAL_ATTENTION,), [SPATIAL_ATTENTION]),
        ((CHANNEL_ATTENTION, SPATIAL_ATTENTION), [SPATIAL_ATTENTION, CHANNEL_ATTENTION]),  # Triton hands the names over as a set
        ((FEATURES, CHANNEL_ATTENTION), [FEATURES, CHANNEL_ATTENTION]),
    ],
)
def test_requested_outputs_and_their_values(triton, trained_model, asked, answered) -> None:
    features = np.random.default_rng(3).integers(0, 256, size=(3, 8, 28, 28), dtype=np.uint8)
    scale, zero_point = 0.04, 120
    channel, stub = _stub(triton)
    response = stub.ModelInfer(_features_request(features, scale, zero_point, asked), timeout=30)
    channel.close()
    assert [o.name for o in response.outputs] == answered and response.model_version == "1"
    x = torch.from_numpy(codec.dequantize(features, scale, zero_point))
    with torch.no_grad():
        spatial, weights = trained_model.cloud.attention_maps(x)
    expected = {
        FEATURES: codec.quantize((x * spatial * weights[:, :, None, None]).numpy(), scale, zero_point),
        SPATIAL_ATTENTION: codec.quantize(spatial.numpy(), 1 / 255, 0),
        CHANNEL_ATTENTION: codec.quantize(weights.numpy(), 1 / 255, 0),
    }
    for out, raw in zip(response.outputs, response.raw_output_contents):
        got = np.frombuffer(raw, np.uint8).reshape(list(out.shape))
        assert out.datatype == "UINT8" and got.shape == expected[out.name].shape
        assert np.abs(got.astype(int) - expected[out.name]).max() <= 1, out.name  # one step of rounding at most


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.parameters.clear(), "needs request parameters 'scale' and 'zero_point'"),
        (lambda r: set_parameters(r.parameters, {"scale": -1.0}), "'scale' must be a positive finite number"),
        (lambda r: set_parameters(r.parameters, {"zero_point": 3.5}), "'zero_point' must be an integer"),
    ],
)
def test_a_malformed_split_request_is_invalid_argument(triton, change, message) -> None:
    request = _features_request(np.zeros((1, 8, 28, 28), np.uint8), 0.05, 128)
    change(request)
    channel, stub = _stub(triton)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_a_batch_with_one_bad_image_fails_only_that_request(triton, sample_face) -> None:
    import cv2

    good = cv2.imencode(".jpg", sample_face)[1].tobytes()
    channel, stub = _stub(triton)
    results = {}
    for name, data in (("good", good), ("bad", b"not an image")):
        request = pb.ModelInferRequest(model_name=CLASSIFIER_MODEL)
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.inputs[0].contents.bytes_contents.append(data)
        try:
            results[name] = stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as error:
            results[name] = error
    channel.close()
    probabilities = np.frombuffer(results["good"].raw_output_contents[0], np.float32)
    assert probabilities.shape == (7,) and abs(probabilities.sum() - 1) < 1e-4
    assert results["bad"].code() == grpc.StatusCode.INVALID_ARGUMENT and "could not be decoded" in results["bad"].details()


TRITONCLIENT_SCRIPT = r'''
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(url=sys.argv[1])
features = np.random.default_rng(0).integers(0, 256, size=(2, 8, 28, 28), dtype=np.uint8)
tensor = grpcclient.InferInput("features", list(features.shape), "UINT8")
tensor.set_data_from_numpy(features)
result = client.infer("fer_rest", [tensor], parameters={"scale": 0.05, "zero_point": 128})
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "models_ready": [client.is_model_ready(m) for m in ("fer_attention", "fer_rest", "fer_classifier")],
    "versions": list(client.get_model_metadata("fer_rest").versions),
    "fingerprint": client.get_model_config("fer_rest").config.parameters["fingerprint"].string_value,
    "probabilities": result.as_numpy("probabilities").tolist(),
}))
'''


def test_tritonclient_works_against_triton_unchanged(triton, trained_model, tmp_path: Path) -> None:
    python = os.environ.get("FER_TRITON_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("FER_TRITON_PYTHON is not set: scripts/test.sh makes a tritonclient[grpc] virtual environment and sets it")
    script = tmp_path / "triton_check.py"
    script.write_text(TRITONCLIENT_SCRIPT)
    done = subprocess.run([python, str(script), triton.target], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["live"] and report["ready"] and report["models_ready"] == [True, True, True]
    assert report["versions"] == ["1"] and report["fingerprint"] == model_fingerprint(trained_model)
    features = np.random.default_rng(0).integers(0, 256, size=(2, 8, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(codec.dequantize(features, 0.05, 128))
        expected = trained_model.tail(trained_model.cloud(x)).softmax(dim=1).numpy()
    assert np.abs(np.asarray(report["probabilities"]) - expected).max() < 1e-4


def _fp32_request(features: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=ATTENTION_MODEL, id=request_id)
    request.inputs.add(name=FEATURES, datatype="FP32", shape=list(features.shape))
    request.raw_input_contents.append(features.astype("<f4").tobytes())
    return request


def test_the_minimal_reference_model_answers_as_fer_cloud_does(trained_model, server, tmp_path: Path) -> None:
    """fer-bench server's reference (deploy/triton/minimal_model.py): FP32 faces sent at once (so they may share a
    batch), each answered with its own attended map, as fer-cloud computes it."""
    from fer_bench.server_load import minimal_repository
    from shared_model.training.export import TritonSettings

    folder = minimal_repository(trained_model, tmp_path, ATTENTION_MODEL, TritonSettings(features="fp32"))
    assert (folder / "1" / "model.py").read_text() == (Path(__file__).parents[1] / "deploy" / "triton" / "minimal_model.py").read_text()
    faces = np.random.default_rng(5).standard_normal((6, 1, 8, 28, 28)).astype(np.float32)
    requests = [_fp32_request(face, str(i)) for i, face in enumerate(faces)]
    minimal = TritonServer(tmp_path)
    try:
        channel, stub = _stub(minimal.start(models=(ATTENTION_MODEL,)))
        calls = [stub.ModelInfer.future(request, timeout=30) for request in requests]
        answers = [call.result() for call in calls]
        channel.close()
    finally:
        minimal.close()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        expected = [pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30) for request in requests]
    for answer, own in zip(answers, expected):
        assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [(FEATURES, "FP32", [1, 8, 28, 28])]
        np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4"), np.frombuffer(own.raw_output_contents[0], "<f4"), atol=1e-5)


@contextmanager
def _rest_triton(model: FERNet, root: Path, *extra_args: str) -> Iterator[TritonServer]:
    """Triton serving ``model``'s fer_rest (version 1) from a repository written under ``root``."""
    triton_repository(model, root, model_fingerprint(model), models=(REST_MODEL,))
    server = TritonServer(root, extra_args=extra_args)
    try:
        yield server.start(models=(REST_MODEL,))
    finally:
        server.close()


@pytest.fixture(scope="module")
def other_triton(trained_model, tmp_path_factory):
    """Triton holding other weights (same architecture, another initialisation)."""
    torch.manual_seed(1)
    with _rest_triton(FERNet(trained_model.config).eval(), tmp_path_factory.mktemp("other") / "triton") as server:
        yield server


def test_a_triton_with_other_weights_is_refused_and_the_edge_answers_locally(other_triton, trained_model, capsys) -> None:
    records = _edge(capsys, "--cloud", other_triton.target, "--strategy", "split-rest", "--timeout-ms", "5000")
    assert records and all(r["strategy"] == "edge" and r["fallback_reason"] == "version_mismatch" for r in records)
    runner = EdgeRunner(trained_model, "auto", CloudClient(other_triton.target, model_fingerprint(trained_model), timeout_s=5.0), timeout_s=5.0)
    first = runner.classify(np.zeros((224, 224, 3), np.uint8))
    assert runner.wait_for_discovery() and runner.planner.candidates == ["edge"]
    assert first.strategy == "edge" and not first.fallback
    runner.close()


@pytest.fixture
def own_triton(trained_model, tmp_path):
    """A Triton of the test's own serving fer_rest (version 1), to be restarted on its port."""
    with _rest_triton(trained_model, tmp_path / "triton") as server:
        yield server


def _across_a_version_bump(triton: TritonServer, model: FERNet, face: np.ndarray, bump, failures_to_open: int = 5) -> list:
    """A split-rest edge served by ``triton``'s fer_rest version 1; ``bump()`` makes it version 2; then faces
    until one is served again (or 20 s pass), which names version 2. The faces after the bump."""
    client = CloudClient(triton.target, model_fingerprint(model), timeout_s=5.0)
    breaker = CircuitBreaker(failure_threshold=failures_to_open, reset_timeout_s=0.2)
    runner = EdgeRunner(model, "split-rest", client, breaker, timeout_s=5.0, refusal_recheck_s=0.3)
    try:
        first = runner.classify(face)
        assert first.strategy == "split-rest" and client.engine_versions == {REST_MODEL: "1"}
        bump()
        after = _until_served(runner, face, "split-rest")
    finally:
        runner.close()
        client.close()
    assert after[-1].strategy == "split-rest" and not after[-1].fallback, [(r.strategy, r.fallback_reason) for r in after]
    assert client.engine_versions == {REST_MODEL: "2"}
    return after


def test_an_edge_follows_a_model_redeployed_as_a_new_version(own_triton, trained_model, sample_face) -> None:
    """The same weights redeployed as version 2 (the repository's version 1 renamed, Triton restarted on its
    port): the edge named version 1, whose calls now meet NOT_FOUND; it asks the metadata again, learns
    version 2 and is served again. Before, it kept the version learned at its first face and every later
    face fell back."""
    model_dir = own_triton.repository / REST_MODEL

    def redeploy() -> None:
        port = own_triton.port
        own_triton.stop()
        (model_dir / "1").rename(model_dir / "2")
        own_triton.start(models=(REST_MODEL,))
        if own_triton.port != port:
            pytest.skip(f"another process took port {port} while Triton restarted")

    after = _across_a_version_bump(own_triton, trained_model, np.ascontiguousarray(sample_face), redeploy)
    assert {r.fallback_reason for r in after[:-1]} <= {"version_mismatch", "unavailable", "circuit_open"}


@pytest.fixture
def polling_triton(trained_model, tmp_path):
    """Triton serving fer_rest (version 1) from a repository it polls every second, as an in-place update needs."""
    with _rest_triton(trained_model, tmp_path / "triton", "--model-control-mode=poll", "--repository-poll-secs=1") as server:
        yield server


def test_an_edge_follows_a_model_triton_reloads_in_place_as_a_new_version(polling_triton, trained_model, sample_face) -> None:
    """Triton polling its repository reloads the model when version 1 becomes version 2, and answers the edge's
    version 1 with UNAVAILABLE ("not at ready state") while its health stays SERVING: the breaker opens, the
    edge asks the metadata again, learns version 2 and is served again. Before, its trials failed for ever."""
    model_dir = polling_triton.repository / REST_MODEL

    def reload_in_place() -> None:
        time.sleep(3)  # Triton's first polls after its start may reload what it just loaded
        (model_dir / "1").rename(model_dir / "2")
        assert _serves_only(polling_triton.target, REST_MODEL, "2"), polling_triton.log_tail()

    after = _across_a_version_bump(polling_triton, trained_model, np.ascontiguousarray(sample_face), reload_in_place, failures_to_open=2)
    assert "unavailable" in {r.fallback_reason for r in after}  # what the old version was answered with


def _serves_only(target: str, model: str, version: str, timeout_s: float = 60.0) -> bool:
    """Wait until Triton's metadata lists ``version`` of ``model`` and no other."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                if list(stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=1).versions) == [version]:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def _until_served(runner: EdgeRunner, face: np.ndarray, strategy: str, seconds: float = 20.0) -> list:
    """Faces classified until one is answered by ``strategy`` or ``seconds`` pass; all results."""
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (results and results[-1].strategy == strategy):
        results.append(runner.classify(face))
        time.sleep(0.05)
    return results
