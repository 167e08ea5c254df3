"""The edge under faults produced for real: a slow, garbled, wrong-shaped, closing or silent server, a blackholed link."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import pytest
from fer_bench.fault_injection import CLOSE_MID_STREAM, GARBAGE, SILENT, SLOW, WRONG_SHAPE, BlackholeLink, Fault, FaultyServer
from fer_bench.loopback import start_server

from edge_client.breaker import OPEN, CircuitBreaker
from edge_client.daemon import run_source
from edge_client.faces import FaceDetector
from edge_client.runner import EdgeRunner
from edge_client.sources import Frame, Source
from edge_client.transport import CloudClient
from shared_model.checkpoint import model_fingerprint

TIMEOUT_S = 0.2
MARGIN_MS = 500  # the goal is 50 ms; this bound leaves room for a loaded two-core CI machine
NEVER_OPENS = dict(failure_threshold=10**6, reset_timeout_s=60)


def _waited_ms(latency: dict) -> float:
    """Time not spent computing here: what the face waited for the cloud (local compute on a busy CI core is not the deadline's business)."""
    return latency["total"] - latency["head"] - latency["encode"] - latency["attention"] - latency["tail"]


def _runner(model, address: str, strategy: str = "split", breaker: CircuitBreaker | None = None, **kwargs) -> EdgeRunner:
    client = CloudClient(address, model_fingerprint(model), timeout_s=TIMEOUT_S)
    return EdgeRunner(model, strategy, client, breaker or CircuitBreaker(**NEVER_OPENS), timeout_s=TIMEOUT_S, **kwargs)


@pytest.fixture
def faulty(trained_model):
    server = FaultyServer(trained_model)
    yield server
    server.stop()


@pytest.mark.parametrize("strategy, use_stream", [("split", False), ("split", True), ("split-rest", False), ("cloud", False)])
def test_a_slow_server_is_answered_locally_within_the_deadline(trained_model, sample_face, faulty, strategy: str, use_stream: bool) -> None:
    faulty.fault = Fault(SLOW, delay_s=10 * TIMEOUT_S)
    runner = _runner(trained_model, faulty.address, strategy, use_stream=use_stream)
    local = EdgeRunner(trained_model).classify(sample_face)
    try:
        results = [runner.classify(sample_face) for _ in range(4)]
    finally:
        runner.close()
    assert [r.fallback_reason for r in results] == ["timeout"] * 4
    assert all(r.strategy == "edge" and r.label == local.label for r in results)
    worst = max(_waited_ms(asdict(r.latency)) for r in results)
    assert worst < TIMEOUT_S * 1000 + MARGIN_MS, f"a face waited {worst:.0f} ms"


def test_the_first_face_waits_for_metadata_and_the_call_within_one_deadline(trained_model, sample_face, faulty) -> None:
    """Metadata answering after 80 % of the deadline, inference after 3 deadlines: the first face is still
    answered locally within one deadline (its call gets only what the wait for metadata left), not two."""
    timeout_s = 1.0
    faulty.fault = Fault(SLOW, delay_s=3 * timeout_s, metadata_delay_s=0.8 * timeout_s)
    client = CloudClient(faulty.address, model_fingerprint(trained_model), timeout_s=timeout_s)
    runner = EdgeRunner(trained_model, "split", client, CircuitBreaker(**NEVER_OPENS), timeout_s=timeout_s)
    try:
        first = runner.classify(sample_face)
    finally:
        runner.close()
    assert first.fallback_reason == "timeout" and first.strategy == "edge"
    assert _waited_ms(asdict(first.latency)) < timeout_s * 1000 + MARGIN_MS, first.latency


def test_auto_does_not_count_the_wait_for_metadata_as_the_edges_cost(trained_model, sample_face, faulty) -> None:
    """auto's first face runs on the edge (calibration): it does not wait for the slow metadata, and
    the edge's predicted latency stays its compute."""
    faulty.fault = Fault(metadata_delay_s=0.8)
    client = CloudClient(faulty.address, model_fingerprint(trained_model), timeout_s=2.0)
    runner = EdgeRunner(trained_model, "auto", client, CircuitBreaker(**NEVER_OPENS), timeout_s=2.0)
    try:
        first = runner.classify(sample_face)
        predicted_edge_ms = runner.planner.predictions_ms()["edge"]
    finally:
        runner.close()
    assert first.strategy == "edge" and first.auto["reason"] == "calibrating"
    assert _waited_ms(asdict(first.latency)) < 300, first.latency
    assert predicted_edge_ms < 300, predicted_edge_ms  # the wait alone would be 800


def test_a_trial_whose_request_cannot_be_built_frees_the_half_open_slot(trained_model, sample_face, faulty) -> None:
    """Half-open, the one trial goes to a face whose split tensor cannot be encoded (the edge's head gives
    integers, which the codec refuses): the slot is freed at once, so the next face is the trial, not
    ``circuit_open`` for the 30 s a trial may stay out."""
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=0.0)
    runner = _runner(trained_model, faulty.address, "split", breaker)
    head = runner.backend.head
    try:
        breaker.record_failure()
        assert not breaker.allow()  # open: starts the (healthy) probe
        breaker.wait_for_probe(5)
        runner.backend.head = lambda x: np.zeros((1, 8, 28, 28), dtype=np.int64)
        spoiled = runner.classify(sample_face)
        runner.backend.head = head
        after = runner.classify(sample_face)
    finally:
        runner.backend.head = head
        runner.close()
    assert spoiled.fallback_reason.startswith("encode_error"), spoiled.fallback_reason
    assert after.fallback_reason is None and after.strategy == "split" and breaker.state == "closed"


@pytest.mark.parametrize("kind", [WRONG_SHAPE, GARBAGE])
@pytest.mark.parametrize("strategy", ["split", "split-rest", "cloud"])
def test_an_unusable_answer_falls_back_and_opens_the_breaker(trained_model, sample_face, faulty, kind: str, strategy: str) -> None:
    faulty.fault = Fault(kind)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=60)
    runner = _runner(trained_model, faulty.address, strategy, breaker)
    try:
        results = [runner.classify(sample_face) for _ in range(3)]
    finally:
        runner.close()
    assert [r.fallback_reason for r in results] == ["invalid_response", "invalid_response", "circuit_open"]
    assert all(r.strategy == "edge" for r in results) and breaker.state == OPEN


@pytest.mark.parametrize("kind", [SLOW, SILENT, WRONG_SHAPE])
def test_auto_on_the_edge_re_measures_a_failing_cloud_behind_local_answers(trained_model, sample_face, faulty, kind: str) -> None:
    """The cloud answers late, never, or wrongly: auto measures each remote strategy beside the edge's
    answers, from the first face on, and stays on the edge. No face waits for those calls, none gets a
    remote answer, and each is the local one."""
    faulty.fault = Fault(kind, delay_s=10 * TIMEOUT_S)
    runner = _runner(trained_model, faulty.address, "auto")
    local = EdgeRunner(trained_model).classify(sample_face)
    try:
        results = [runner.classify(sample_face) for _ in range(40)]
        runner.wait_for_background(5 * TIMEOUT_S)
        penalized = runner.planner.predictions_ms()
    finally:
        runner.close()
    settled = results
    assert all(r.strategy == "edge" and not r.fallback and r.label == local.label for r in settled), [r.auto for r in settled]
    assert sum(r.auto["background"] is not None for r in settled) >= 2, [r.auto for r in settled]
    worst = max(_waited_ms(asdict(r.latency)) for r in settled)
    assert worst < MARGIN_MS, f"a face waited {worst:.0f} ms"
    assert min(ms for strategy, ms in penalized.items() if strategy != "edge") >= TIMEOUT_S * 1000, penalized


def _frames(image: np.ndarray, count: int, before_each=None) -> Source:
    def frames():
        for index in range(count):
            if before_each is not None:
                before_each(index)
            yield Frame("video", index, image)

    return Source("video", frames(), True, count)


def _run_video(runner: EdgeRunner, face: np.ndarray, count: int, before_each=None) -> list[dict]:
    try:
        return list(run_source(_frames(np.ascontiguousarray(face), count, before_each), FaceDetector(whole_image=True), runner))
    finally:
        runner.close()


def test_a_stream_closed_mid_way_is_reopened_and_every_frame_answered_once(trained_model, sample_face, faulty) -> None:
    faulty.fault = Fault(CLOSE_MID_STREAM, close_after=3)
    records = _run_video(_runner(trained_model, faulty.address, use_stream=True), sample_face, 12)
    assert [r["frame"] for r in records] == list(range(12))
    remote = [r for r in records if not r["fallback"]]
    assert {r["fallback_reason"] for r in records if r["fallback"]} == {"unavailable"}
    assert len(remote) >= 6 and all(r["strategy"] == "split" for r in remote)
    assert faulty.servicer.streams >= 3  # each closed stream was replaced by a new one


def test_a_silent_stream_times_out_and_is_replaced_not_waited_on_again(trained_model, sample_face, faulty) -> None:
    faulty.fault = Fault(SILENT)
    records = _run_video(_runner(trained_model, faulty.address, use_stream=True), sample_face, 5)
    assert [r["fallback_reason"] for r in records] == ["timeout"] * 5
    latencies = [r["latency"] for r in records]
    assert max(map(_waited_ms, latencies)) < TIMEOUT_S * 1000 + MARGIN_MS, latencies
    assert faulty.servicer.streams == 5  # a timed-out stream is treated as broken: a fresh one per call


def test_a_blackholed_link_mid_stream(trained_model, sample_face) -> None:
    """Every frame answered exactly once, none waits past the deadline, the cloud again soon after the link returns."""
    server = start_server(trained_model)
    link = BlackholeLink(server.port)
    client = CloudClient(link.address, model_fingerprint(trained_model), timeout_s=TIMEOUT_S)
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=0.2, probe=lambda: client.healthy(TIMEOUT_S))
    runner = EdgeRunner(trained_model, "split", client, breaker, timeout_s=TIMEOUT_S, use_stream=True)
    phases: dict[int, str] = {}
    events: dict[str, float] = {}

    def before_each(index: int) -> None:
        time.sleep(0.03)  # frames at a camera's pace, so that wall time passes
        if index == 10:
            link.blackhole()
            events["blackhole"] = time.monotonic()
        elif index >= 10 and "restore" not in events and time.monotonic() - events["blackhole"] > 1.5:
            link.restore()
            events["restore"] = time.monotonic()
        phases[index] = "before" if "blackhole" not in events else ("silent" if "restore" not in events else "after")
        events[f"frame{index}"] = time.monotonic()

    try:
        records = _run_video(runner, sample_face, 90, before_each)
    finally:
        link.close()
        server.stop_now()
    assert [r["frame"] for r in records] == list(range(90))
    by_phase = {phase: [r for r in records if phases[r["frame"]] == phase] for phase in ("before", "silent", "after")}
    assert all(r["strategy"] == "split" and not r["fallback"] for r in by_phase["before"])
    assert by_phase["silent"] and all(r["fallback"] and r["strategy"] == "edge" for r in by_phase["silent"])
    assert {r["fallback_reason"] for r in by_phase["silent"]} <= {"timeout", "circuit_open"}
    worst = max(_waited_ms(r["latency"]) for r in records)
    assert worst < TIMEOUT_S * 1000 + MARGIN_MS, f"a frame waited {worst:.0f} ms"
    back = [r for r in by_phase["after"] if r["strategy"] == "split" and not r["fallback"]]
    assert back, [(r["frame"], r["fallback_reason"]) for r in by_phase["after"]]
    back_after_s = events[f"frame{back[0]['frame']}"] - events["restore"]
    assert back_after_s < 5.0  # goal 2 s; generous for CI
    assert all(r["strategy"] == "split" for r in records[-5:])


@pytest.mark.parametrize("strategy", ["split", "auto"])
def test_a_link_silent_before_the_first_face_holds_no_face_past_its_deadline(trained_model, sample_face, strategy: str) -> None:
    """The first face waits for ModelMetadata only within its own deadline, and is then answered locally."""
    server = start_server(trained_model)
    link = BlackholeLink(server.port)
    timeout_s = 1.0  # long enough that waiting it twice (for metadata, then for the call) would break the bound below
    client = CloudClient(link.address, model_fingerprint(trained_model), timeout_s=timeout_s)
    assert client.healthy(5.0)  # connected; then the link goes silent, with no reset
    link.blackhole()
    runner = EdgeRunner(trained_model, strategy, client, CircuitBreaker(**NEVER_OPENS), timeout_s=timeout_s)
    try:
        results = [runner.classify(sample_face) for _ in range(3)]
    finally:
        runner.close()
        link.close()
        server.stop_now()
    assert all(r.strategy == "edge" for r in results)
    assert {r.fallback_reason for r in results} <= {None, "timeout", "unavailable", "circuit_open"}  # gRPC may call a connection that never completes either
    assert strategy == "auto" or results[0].fallback_reason in ("timeout", "unavailable")
    worst = max(_waited_ms(asdict(r.latency)) for r in results)
    assert worst < timeout_s * 1000 + MARGIN_MS, f"a face waited {worst:.0f} ms"
