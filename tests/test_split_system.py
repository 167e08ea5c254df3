"""The split system end to end over a real gRPC server on loopback."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from fer_bench.loopback import attention_off_the_loop, start_server

from edge_client.breaker import CircuitBreaker
from edge_client.daemon import run_source
from edge_client.faces import FaceDetector
from edge_client.runner import EdgeRunner
from edge_client.wire_options import WireOptions
from edge_client.sources import Frame, Source
from edge_client.transport import CloudClient
from shared_model.checkpoint import model_fingerprint
from shared_model.preprocessing import pixels_to_tensor

PROBABILITY_TOLERANCE = 0.03  # uint8 split tensor: one quantization step propagated through the tail


def _client(server, model, **kwargs) -> CloudClient:
    return CloudClient(f"127.0.0.1:{server.port}", model_fingerprint(model), timeout_s=kwargs.pop("timeout_s", 5.0), **kwargs)


def _max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a)


@pytest.fixture
def faces(sample_face, parity_faces):
    return [sample_face, *parity_faces]


def test_split_agrees_with_local(server, trained_model, faces) -> None:
    local = EdgeRunner(trained_model)
    split = EdgeRunner(trained_model, "split", _client(server, trained_model), timeout_s=5.0)
    for pixels in faces:
        ours, theirs = local.classify(pixels), split.classify(pixels)
        assert theirs.strategy == "split" and not theirs.fallback, theirs.fallback_reason
        assert _max_difference(ours.probabilities, theirs.probabilities) <= PROBABILITY_TOLERANCE
        top_two = sorted(ours.probabilities.values())[-2:]
        if top_two[1] - top_two[0] > 2 * PROBABILITY_TOLERANCE:
            assert theirs.label == ours.label


def test_split_in_fp32_is_exact_to_float_precision(server, trained_model, sample_face) -> None:
    local = EdgeRunner(trained_model).classify(sample_face)
    split = EdgeRunner(trained_model, "split", _client(server, trained_model), wire=WireOptions(encoding="fp32", split_returns="features"), timeout_s=5.0).classify(sample_face)
    assert split.strategy == "split"
    assert _max_difference(local.probabilities, split.probabilities) < 1e-5
    assert split.label == local.label


@pytest.mark.parametrize("image_format", ["raw", "png", "jpeg"])
def test_cloud_agrees_with_local(server, trained_model, faces, image_format: str) -> None:
    local = EdgeRunner(trained_model)
    # The prepared 224x224 pixels, unshrunk: PNG is lossless, JPEG nearly so (sending the crop: tests/test_offload.py).
    cloud = EdgeRunner(trained_model, "cloud", _client(server, trained_model), wire=WireOptions(image_format=image_format, image_size=None), timeout_s=5.0)
    for pixels in faces:
        ours, theirs = local.classify(pixels), cloud.classify(pixels)
        assert theirs.strategy == "cloud" and not theirs.fallback, theirs.fallback_reason
        if image_format == "jpeg":  # lossy: same answer where the model is decided
            top_two = sorted(ours.probabilities.values())[-2:]
            if top_two[1] - top_two[0] > 0.2:
                assert theirs.label == ours.label
        else:
            assert _max_difference(ours.probabilities, theirs.probabilities) < 1e-4
            assert theirs.label == ours.label
    assert theirs.bytes_up > 0 and theirs.latency.network >= 0


def test_raw_cloud_request_carries_the_papers_150_kb(server, trained_model, sample_face) -> None:
    result = EdgeRunner(trained_model, "cloud", _client(server, trained_model), wire=WireOptions(image_format="raw"), timeout_s=5.0).classify(sample_face)
    assert 224 * 224 * 3 <= result.bytes_up < 224 * 224 * 3 + 200


def test_version_mismatch_is_refused_and_answered_locally(server, trained_model, sample_face) -> None:
    client = CloudClient(f"127.0.0.1:{server.port}", "0123456789abcdef", timeout_s=5.0)
    result = EdgeRunner(trained_model, "split", client).classify(sample_face)
    assert result.fallback and result.fallback_reason == "version_mismatch"
    assert result.strategy == "edge"
    assert result.label == EdgeRunner(trained_model).classify(sample_face).label


def test_unreachable_cloud_is_answered_locally_within_the_deadline(trained_model, sample_face) -> None:
    client = CloudClient("127.0.0.1:9", model_fingerprint(trained_model), timeout_s=0.3)
    runner = EdgeRunner(trained_model, "split", client, CircuitBreaker(failure_threshold=2, reset_timeout_s=60), timeout_s=0.3)
    results = [runner.classify(sample_face) for _ in range(4)]
    assert [r.fallback_reason for r in results] == ["unavailable", "unavailable", "circuit_open", "circuit_open"]
    assert all(r.latency.total < 5000 for r in results)


def _video_frames(image: np.ndarray, count: int, actions: dict[int, callable]) -> Source:
    def frames():
        for index in range(count):
            if index in actions:
                actions[index]()
            yield Frame("video", index, image)

    return Source("video", frames(), True, count)


def test_server_killed_mid_stream_then_back(trained_model, sample_face) -> None:
    """Every frame gets exactly one result; local while the server is gone; the cloud again once it returns."""
    first = start_server(trained_model)
    port = first.port
    servers = [first]

    def kill() -> None:
        first.stop_now()

    def restart() -> None:
        servers.append(start_server(trained_model, port=port))
        time.sleep(1.0)  # longer than the channel's reconnect backoff after a short outage

    face = np.ascontiguousarray(sample_face)
    client = CloudClient(f"127.0.0.1:{port}", model_fingerprint(trained_model), timeout_s=2.0)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=0.2, probe=lambda: client.healthy(0.5))
    runner = EdgeRunner(trained_model, "split", client, breaker, timeout_s=2.0, use_stream=True)
    source = _video_frames(face, 24, {6: kill, 12: restart})
    try:
        records = list(run_source(source, FaceDetector(whole_image=True), runner))
    finally:
        client.close()
        for s in servers:
            s.stop_now()
    assert [r["frame"] for r in records] == list(range(24))
    before, during, after = records[:6], records[6:12], records[16:]
    assert all(r["strategy"] == "split" and not r["fallback"] for r in before)
    assert all(r["fallback"] and r["strategy"] == "edge" for r in during)
    assert {r["fallback_reason"] for r in during} <= {"unavailable", "circuit_open", "cancelled", "timeout"}
    assert all(r["strategy"] == "split" and not r["fallback"] for r in after), [(r["frame"], r["fallback_reason"]) for r in records]
    labels = {r["label"] for r in records}
    assert len(labels) == 1


def test_concurrent_clients_are_batched_and_all_answered(trained_model, sample_face) -> None:
    from cloud_server.engine import BatchingSettings

    # A slow forward on the batcher's thread (a busy accelerator); inline, a sleep would block the loop itself.
    server = start_server(attention_off_the_loop(trained_model), batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=20))
    batcher = server.engine.batchers["fer_attention"]
    fast = batcher.forward
    batcher.forward = lambda x: time.sleep(0.05) or fast(x)  # requests arriving meanwhile form the next batch
    client = _client(server, trained_model)
    with torch.no_grad():
        z = trained_model.head(pixels_to_tensor(sample_face))
    sizes, errors = [], []

    def call() -> None:
        try:
            response = client.stub.ModelInfer(client.attention_request(z), timeout=10)
            sizes.append(response.parameters["batch_size"].int64_param)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        client.close()
        server.stop_now()
    assert not errors and len(sizes) == 8
    assert max(sizes) > 1


@pytest.fixture(scope="module")
def other_weights(trained_model):
    """The shipped network with one weight nudged: another fingerprint, as a cloud mid-rollout holds."""
    import copy

    other = copy.deepcopy(trained_model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert model_fingerprint(other) != model_fingerprint(trained_model)
    return other


def _wait_healthy(client: CloudClient, seconds: float = 10.0) -> None:
    stop = time.monotonic() + seconds
    while not client.healthy(0.5):
        assert time.monotonic() < stop, "the new server never answered its health check"
        time.sleep(0.05)


def _swap_until(runner: EdgeRunner, face: np.ndarray, done, seconds: float = 10.0) -> list:
    """Faces classified one after another until ``done(result)`` holds or ``seconds`` pass; all results."""
    results = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        results.append(runner.classify(face))
        if done(results[-1]):
            break
        time.sleep(0.02)
    return results


@pytest.mark.parametrize("strategy", ["split", "auto"])
def test_a_cloud_with_other_weights_is_refused_until_its_rollout_ends(trained_model, other_weights, sample_face, strategy: str) -> None:
    """The cloud holds other weights when the edge starts: every face is answered locally with no call, and the
    cloud is asked again while it refuses. Replaced on the same port by one with the edge's weights (a rollout
    that ends), it is used again by the same runner: a refusal is not for the runner's lifetime."""
    old = start_server(other_weights)
    port = old.port
    servers = [old]
    client = CloudClient(f"127.0.0.1:{port}", model_fingerprint(trained_model), timeout_s=2.0)
    runner = EdgeRunner(trained_model, strategy, client, CircuitBreaker(reset_timeout_s=0.2), timeout_s=2.0, refusal_recheck_s=0.3)
    face = np.ascontiguousarray(sample_face)
    try:
        refused = [runner.classify(face)]
        assert runner.wait_for_discovery(5.0)  # auto's first face is the edge's: it does not wait for the answer
        refused += [runner.classify(face) for _ in range(4)]
        suspended = runner.planner.suspended if runner.planner else None
        old.stop_now()
        servers.append(start_server(trained_model, port=port))
        back = _swap_until(runner, face, lambda r: r.strategy != "edge")
    finally:
        runner.close()
        client.close()
        for s in servers:
            s.stop_now()
    assert all(r.strategy == "edge" for r in refused), [(r.strategy, r.fallback_reason) for r in refused]
    if strategy == "split":
        assert {r.fallback_reason for r in refused} == {"version_mismatch"}
    else:  # auto leaves the refused strategies out for now: its edge answers are no fallback
        assert suspended == {"cloud", "split", "split-rest"} and not any(r.fallback for r in refused)
    assert back[-1].strategy != "edge" and not back[-1].fallback, [(r.strategy, r.fallback_reason) for r in back]
    assert back[-1].label == refused[0].label


def test_auto_suspends_what_a_redeployed_cloud_refuses_and_resumes_it_when_the_weights_match(trained_model, other_weights, sample_face) -> None:
    """Mid-run, the cloud is redeployed with other weights: auto's calls meet them (answers naming another
    fingerprint), it answers locally and suspends those strategies, and resumes them once the cloud
    holds the edge's weights again."""
    first = start_server(trained_model)
    port = first.port
    servers = [first]
    client = CloudClient(f"127.0.0.1:{port}", model_fingerprint(trained_model), timeout_s=2.0)
    runner = EdgeRunner(trained_model, "auto", client, CircuitBreaker(reset_timeout_s=0.2), timeout_s=2.0, refusal_recheck_s=0.3)
    face = np.ascontiguousarray(sample_face)
    try:
        before = _swap_until(runner, face, lambda r: r.strategy != "edge")
        first.stop_now()
        servers.append(start_server(other_weights, port=port))
        _wait_healthy(client)  # so that the calls meet the other weights, not a channel still reconnecting
        refused = _swap_until(runner, face, lambda r: len(runner.planner.suspended) == 3)
        suspended = runner.planner.suspended
        during = [runner.classify(face) for _ in range(5)]
        servers[-1].stop_now()
        servers.append(start_server(trained_model, port=port))
        back = _swap_until(runner, face, lambda r: r.strategy != "edge" and not r.fallback)
    finally:
        runner.close()
        client.close()
        for s in servers:
            s.stop_now()
    assert before[-1].strategy != "edge"
    assert suspended == {"cloud", "split", "split-rest"}, [(r.strategy, r.fallback_reason) for r in refused]
    assert "version_mismatch" in {r.fallback_reason for r in refused}  # a call met the other weights
    assert all(r.strategy == "edge" and r.bytes_up == 0 for r in during)
    assert back[-1].strategy != "edge" and not back[-1].fallback, [(r.strategy, r.fallback_reason, r.auto) for r in back]
    assert runner.planner.suspended != suspended
