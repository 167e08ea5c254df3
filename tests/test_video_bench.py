"""fer-bench video's three modes on tiny inputs: frames per second per detector, a long video's memory, steady labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2

from fer_bench.cli import main as bench_main
from servers import SAMPLE_FACE, distorted_faces


def test_rate_mode_compares_detectors_in_one_run(tmp_path: Path, capsys) -> None:
    code = bench_main([
        "video", "--shaper", "proxy", "--links", "unthrottled", "--strategies", "edge", "--in-flight", "1", "--rounds", "1",
        "--frames", "12", "--size", "320x240", "--detectors", "auto,haar", "--out", str(tmp_path), "--json",
    ])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["detector"], r["strategy"]) for r in rows] == [("auto", "edge"), ("haar", "edge")]
    assert all(r["fps_median"] > 0 and r["faces"] > 0 for r in rows)
    faces = json.loads((tmp_path / "video_faces.json").read_text())
    assert {f["detector"] for f in faces} == {"auto", "haar"}


def test_long_mode_processes_every_frame_and_samples_memory(tmp_path: Path, capsys) -> None:
    code = bench_main(["video", "--mode", "long", "--minutes", "0.05", "--sample-s", "0.2", "--size", "320x240", "--out", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["nothing_dropped"] is True
    assert report["frames"] == report["frames_expected"] == 90  # 3 s at 30 frames per second
    assert report["csv_rows"] == report["records"] == report["faces"] + report["frames_without_face"]
    assert report["samples"] >= 2 and report["rss_start_mb"] > 0 and report["fps"] > 0
    with (tmp_path / "long_video_memory.csv").open(newline="") as handle:
        samples = list(csv.DictReader(handle))
    assert len(samples) == report["samples"] and all(float(s["rss_mb"]) > 0 for s in samples)
    assert (tmp_path / "long_video.png").stat().st_size and (tmp_path / "long_video_expressions.png").stat().st_size


def test_labels_mode_measures_flicker_and_the_delay_of_a_change(tmp_path: Path) -> None:
    from fer_bench.label_steadiness import LabelSettings, run_label_benchmark, summarize_labels

    faces = tmp_path / "faces"  # the sample face under happy, its distortions under every class: the benchmark keeps
    for name in ("angry", "disgust", "fear", "sad", "surprise", "neutral"):  # those the model labels as their folder
        (faces / name).mkdir(parents=True)
        for k, image in enumerate(distorted_faces()):
            cv2.imwrite(str(faces / name / f"face{k}.png"), image)
    (faces / "happy").mkdir()
    cv2.imwrite(str(faces / "happy" / "face.png"), cv2.imread(str(SAMPLE_FACE)))
    settings = LabelSettings(faces, time_constants=(0.3,), clips=1, seconds=2.0, margin=1.0, confidence=0.4)
    rows = run_label_benchmark(settings, progress=False)
    assert [(r.kind, r.time_constant_s) for r in rows] == [("steady", 0.0), ("steady", 0.3), ("change", 0.0), ("change", 0.3)]
    raw_change, smoothed_change = rows[2], rows[3]
    assert raw_change.delay_s is not None and smoothed_change.delay_s is not None
    assert raw_change.delay_s <= smoothed_change.delay_s <= 0.5  # smoothing delays a real change, within half a second
    summary = summarize_labels(rows)
    assert [s["time_constant_s"] for s in summary] == [0.0, 0.3] and summary[1]["change_clips"] == 1
