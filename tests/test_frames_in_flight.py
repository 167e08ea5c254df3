"""Video with several frames in flight: in order, exactly one record per frame, never more than N at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fer_bench.fault_injection import SILENT, SLOW, Fault, FaultyServer
from servers import still_video

from edge_client.breaker import CircuitBreaker
from edge_client.cli import main as edge_main
from edge_client.daemon import run_source
from edge_client.faces import FaceDetector
from edge_client.runner import EdgeRunner
from edge_client.sources import Frame, Source
from edge_client.transport import CloudClient
from shared_model.checkpoint import model_fingerprint

TIMEOUT_S = 0.4
NEVER_OPENS = {"failure_threshold": 10**6}


def _video(face: np.ndarray, count: int) -> Source:
    return Source("video", (Frame("video", index, np.ascontiguousarray(face)) for index in range(count)), True, count)


def _records(model, face: np.ndarray, address: str, count: int, in_flight: int, use_stream: bool = False) -> list[dict]:
    client = CloudClient(address, model_fingerprint(model), timeout_s=TIMEOUT_S)
    runner = EdgeRunner(model, "split", client, CircuitBreaker(**NEVER_OPENS), timeout_s=TIMEOUT_S, use_stream=use_stream)
    try:
        return list(run_source(_video(face, count), FaceDetector(whole_image=True), runner, in_flight=in_flight))
    finally:
        runner.close()


@pytest.fixture
def faulty(trained_model):
    server = FaultyServer(trained_model)
    yield server
    server.stop()


@pytest.mark.parametrize("in_flight", [1, 3])
def test_frames_overlap_on_the_wire_up_to_the_bound_and_come_back_in_order(trained_model, sample_face, faulty, in_flight: int) -> None:
    faulty.fault = Fault(SLOW, delay_s=0.15)  # each answer takes a while: frames in flight meet at the server
    records = _records(trained_model, sample_face, faulty.address, 9, in_flight)
    assert [r["frame"] for r in records] == list(range(9))
    assert all(r["strategy"] == "split" and not r["fallback"] for r in records)
    assert faulty.servicer.most_in_progress == in_flight


def test_a_silent_cloud_with_frames_in_flight_loses_no_frame(trained_model, sample_face, faulty) -> None:
    faulty.fault = Fault(SILENT)
    records = _records(trained_model, sample_face, faulty.address, 7, 3, use_stream=True)
    assert [r["frame"] for r in records] == list(range(7))
    assert [r["fallback_reason"] for r in records] == ["timeout"] * 7
    local = EdgeRunner(trained_model).classify(sample_face).label
    assert {r["label"] for r in records} == {local}


def test_a_consumer_that_stops_early_leaves_no_work_running(trained_model, sample_face, faulty) -> None:
    faulty.fault = Fault(SLOW, delay_s=0.1)
    client = CloudClient(faulty.address, model_fingerprint(trained_model), timeout_s=TIMEOUT_S)
    runner = EdgeRunner(trained_model, "split", client, CircuitBreaker(**NEVER_OPENS), timeout_s=TIMEOUT_S)
    records = run_source(_video(sample_face, 50), FaceDetector(whole_image=True), runner, in_flight=3)
    first = [next(records) for _ in range(2)]
    records.close()  # as Ctrl-C or a closed pipe does
    runner.close()
    assert [r["frame"] for r in first] == [0, 1]
    assert faulty.servicer.requests <= 2 + 3  # what was read ahead, not the rest of the video
    assert faulty.servicer.in_progress == 0


def test_in_flight_is_checked(trained_model, sample_face) -> None:
    with pytest.raises(ValueError, match="in_flight"):
        next(run_source(_video(sample_face, 1), FaceDetector(whole_image=True), EdgeRunner(trained_model), in_flight=0))


def test_the_cli_streams_a_video_with_frames_in_flight_to_the_real_cloud(server, tmp_path: Path, capsys) -> None:
    video = still_video(tmp_path / "clip.avi", 8)
    assert edge_main(["run", str(video), "--cloud", f"127.0.0.1:{server.port}", "--strategy", "split", "--in-flight", "3", "--json", "--no-progress"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [r["frame"] for r in records] == list(range(8))
    assert all(r["strategy"] == "split" and not r["fallback"] and r["track_id"] is not None for r in records)


def _failing_video(face: np.ndarray, count: int) -> Source:
    """A video whose reader fails after ``count`` frames (a camera unplugged, a decoder that raises)."""

    def frames():
        yield from (Frame("video", index, np.ascontiguousarray(face)) for index in range(count))
        raise RuntimeError("the camera went away")

    return Source("video", frames(), True, None)


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_source_that_fails_midway_keeps_the_frames_already_read(trained_model, sample_face, in_flight: int) -> None:
    records = run_source(_failing_video(sample_face, 5), FaceDetector(whole_image=True), EdgeRunner(trained_model), in_flight=in_flight)
    got = []
    with pytest.raises(RuntimeError, match="camera went away"):
        for record in records:
            got.append(record)
    assert [r["frame"] for r in got] == list(range(5))
