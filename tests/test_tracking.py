"""Faces in video: confirmation over consecutive frames, smoothing, stable track ids; the clip maker and its scores."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge_client.daemon import run_source
from edge_client.faces import Box, ConfirmationWindow, FaceDetector, FaceTracker, TrackerSettings
from edge_client.runner import EdgeRunner
from edge_client.sources import open_source
from fer_bench.cli import main as bench_main
from fer_bench.faces import ClipMotion, load_photo, make_clip, score

FACE = Box(100, 100, 50, 50)
SETTINGS = TrackerSettings(confirm_frames=3, keep_frames=2, smoothing=0.5)


def _feed(tracker: FaceTracker, frames: list[list[Box]]) -> list[list[tuple[int, list[int]]]]:
    return [[(t.track_id, t.as_box().to_list()) for t in tracker.update(boxes)] for boxes in frames]


def test_a_face_is_reported_from_its_third_consecutive_frame_with_one_id() -> None:
    shown = _feed(FaceTracker(SETTINGS), [[FACE]] * 5)
    assert [len(s) for s in shown] == [0, 0, 1, 1, 1]
    assert {s[0][0] for s in shown[2:]} == {0}


def test_a_box_seen_in_fewer_consecutive_frames_is_never_reported() -> None:
    flicker = [[FACE], [FACE], [], [FACE], [FACE], [], [FACE]]
    assert all(s == [] for s in _feed(FaceTracker(SETTINGS), flicker))


def test_a_confirmed_face_keeps_its_id_through_short_misses_and_loses_it_after_long_ones() -> None:
    short_miss = _feed(FaceTracker(SETTINGS), [[FACE]] * 3 + [[]] * 2 + [[FACE]])
    assert [len(s) for s in short_miss] == [0, 0, 1, 0, 0, 1]  # not reported while missed, back at once
    assert short_miss[5][0][0] == short_miss[2][0][0]
    long_miss = _feed(FaceTracker(SETTINGS), [[FACE]] * 3 + [[]] * 3 + [[FACE]] * 3)
    assert [len(s) for s in long_miss] == [0, 0, 1, 0, 0, 0, 0, 0, 1]  # a new face: confirmed again
    assert long_miss[8][0][0] != long_miss[2][0][0]


def test_boxes_are_smoothed_and_two_faces_keep_their_own_ids() -> None:
    other = Box(300, 100, 60, 60)
    moved = Box(110, 100, 50, 50)
    shown = _feed(FaceTracker(SETTINGS), [[FACE, other]] * 3 + [[other, moved]])
    ids = {box[0]: track_id for track_id, box in shown[2]}
    last = {box[0]: track_id for track_id, box in shown[3]}
    assert ids[300] == last[300] and ids[100] == last[105]  # halfway from 100 to 110
    assert len(set(ids.values())) == 2


def test_iou() -> None:
    assert FACE.iou(FACE) == 1.0
    assert FACE.iou(Box(125, 100, 50, 50)) == pytest.approx(1250 / 3750)
    assert FACE.iou(Box(0, 0, 10, 10)) == 0.0


def test_clip_moves_the_true_box_with_the_camera() -> None:
    image = np.zeros((200, 200, 3), np.uint8)
    cv2.rectangle(image, (60, 40), (99, 79), (255, 255, 255), -1)  # a bright 40x40 square
    clip = make_clip(image, Box(60, 40, 40, 40), ClipMotion("zoom", zoom=0.5, rotation=0.0, frames=4))
    assert np.array_equal(clip.frames[0], image) and clip.truth[0] == Box(60, 40, 40, 40)
    scale = 1.5  # frame 2 of 4: half a period, full zoom about the centre (100, 100)
    centre = 100 + scale * (80 - 100), 100 + scale * (60 - 100)
    assert clip.truth[2] == Box(round(centre[0] - 30), round(centre[1] - 30), 60, 60)
    bright = np.argwhere(clip.frames[2][:, :, 0] > 128)
    assert bright.min(0).tolist() == pytest.approx([clip.truth[2].y, clip.truth[2].x], abs=1)


def test_score_counts_false_boxes_and_found_faces() -> None:
    truth = [FACE, FACE, FACE, FACE]
    reported = [[FACE], [], [FACE, Box(0, 0, 30, 30)], [Box(105, 100, 50, 50), Box(100, 105, 50, 50)]]
    false_per_100, found = score(reported, truth)
    assert found == 75.0 and false_per_100 == 50.0  # one box elsewhere, one duplicate on the face


def test_tracked_video_records_carry_a_stable_track_id(tmp_path, trained_model) -> None:
    image, box = load_photo(None, None)
    path = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (image.shape[1], image.shape[0]))
    for _ in range(5):
        writer.write(image)
    writer.release()
    records = list(run_source(open_source(str(path)), FaceDetector(), EdgeRunner(trained_model)))
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]
    assert {r["track_id"] for r in records} == {0}  # confirmed later, reported from its first frame
    assert all(r["error"] is None and Box(*r["box"]).iou(box) > 0.8 for r in records)


def test_confirmation_window_reports_confirmed_faces_from_their_first_frame_only() -> None:
    window: ConfirmationWindow[int] = ConfirmationWindow(FaceTracker(SETTINGS))
    flicker = Box(300, 300, 40, 40)
    frames = [[FACE, flicker], [FACE], [FACE], [FACE, flicker], [FACE, flicker], []]
    released = [out for index, boxes in enumerate(frames) for out in window.push(index, boxes)]
    assert [index for index, _ in released] == [0, 1, 2, 3]  # two frames wait for confirmation
    released += window.flush()
    assert [index for index, _ in released] == [0, 1, 2, 3, 4, 5]
    reported = [[box.x for box, _ in faces] for _, faces in released]
    assert reported == [[100], [100], [100], [100], [100], []]  # the flicker never lasts 3 frames
    assert {track_id for _, faces in released for _, track_id in faces} == {0}


def test_stills_are_detected_at_once_without_track_id(trained_model) -> None:
    from edge_client.samples import sample_image

    records = list(run_source(open_source(str(sample_image())), FaceDetector(), EdgeRunner(trained_model)))
    assert len(records) == 1 and records[0]["track_id"] is None and records[0]["error"] is None


def test_fer_bench_faces_writes_its_results(tmp_path, capsys) -> None:
    code = bench_main(["faces", "--detectors", "haar default 1.1/5", "--confirm", "2", "--frames", "4", "--out", str(tmp_path), "--json"])
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} == {"faces.csv", "faces.json", "faces.png"}
    rows = json.loads(capsys.readouterr().out)
    assert {(r["clip"], r["mode"]) for r in rows} >= {("all clips", "stills"), ("all clips", "video N=2")}
    assert all(r["frames"] == 4 and 0 <= r["found_pct"] <= 100 and r["fps"] > 0 for r in rows if r["clip"] != "all clips")


def test_blazeface_anchors_follow_the_model_geometry() -> None:
    from edge_client.faces import BLAZEFACE_MODELS, blazeface_anchors

    short, full = blazeface_anchors(BLAZEFACE_MODELS["short"]), blazeface_anchors(BLAZEFACE_MODELS["full"])
    assert short.shape == (16 * 16 * 2 + 8 * 8 * 6, 2) and full.shape == (48 * 48, 2)
    np.testing.assert_allclose(short[:3], [[1 / 32, 1 / 32], [1 / 32, 1 / 32], [3 / 32, 1 / 32]])
    np.testing.assert_allclose(short[512], [1 / 16, 1 / 16])


@pytest.mark.parametrize("variant", ["short", "full"])
def test_blazeface_finds_the_sample_face_and_nothing_in_a_blank_image(variant: str) -> None:
    pytest.importorskip("ai_edge_litert", reason="BlazeFace needs the blazeface extra (ai-edge-litert)")
    from edge_client.faces import BlazeFaceDetector

    image, haar_box = load_photo(None, None)
    detector = BlazeFaceDetector(variant)
    boxes = detector.detect(image)
    assert len(boxes) == 1 and boxes[0].iou(haar_box) > 0.5
    assert detector.detect(np.full((300, 400, 3), 128, np.uint8)) == []
