"""The edge daemon and the cloud CLI as users run them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_client.cli import main as edge_main
from edge_client.cli import sample_image
from servers import still_video


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_sample_photo_locally(capsys) -> None:
    assert edge_main(["run", str(sample_image()), "--json", "--threads", "1"]) == 0
    [record] = _records(capsys)
    assert record["strategy"] == "edge" and not record["fallback"]
    assert record["box"] == [177, 67, 93, 93]
    assert record["label"] in record["probabilities"] and abs(sum(record["probabilities"].values()) - 1) < 1e-3
    assert set(record["latency"]) == {"head", "encode", "network", "server", "attention", "tail", "total"}


def test_folder_with_a_corrupt_image_loses_nothing(tmp_path: Path, capsys) -> None:
    shutil.copy(sample_image(), tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cv2.imwrite(str(tmp_path / "c.png"), np.full((64, 64), 40, np.uint8))  # no face in it
    assert edge_main(["run", str(tmp_path), "--json", "--no-progress"]) == 0
    records = _records(capsys)
    assert [Path(r["source"]).name for r in records] == ["a.png", "b.jpg", "c.png"]
    assert records[0]["label"] and records[0]["error"] is None
    assert "cannot decode" in records[1]["error"] and records[1]["label"] is None
    assert records[2]["error"] == "no face found"


def test_a_dataset_of_class_subfolders_is_walked(tmp_path: Path, capsys) -> None:
    for name in ("happy", "sad/nested"):
        (tmp_path / name).mkdir(parents=True)
        shutil.copy(sample_image(), tmp_path / name / "face.png")
    assert edge_main(["run", str(tmp_path), "--json", "--no-progress", "--whole-image"]) == 0
    records = _records(capsys)
    assert sorted(Path(r["source"]).relative_to(tmp_path).as_posix() for r in records) == ["happy/face.png", "sad/nested/face.png"]


def test_with_a_cloud_the_default_is_auto(server, capsys) -> None:
    assert edge_main(["run", str(sample_image()), "--cloud", f"127.0.0.1:{server.port}", "--json"]) == 0
    [record] = _records(capsys)
    assert record["requested_strategy"] == "auto" and record["auto"]["choice"] == record["strategy"]
    assert set(record["auto"]["predicted_ms"]) == {"edge", "cloud", "split", "split-rest"}


@pytest.mark.parametrize("bad", [["--timeout-ms", "0"], ["--max-frames", "-1"], ["--image-size", "0"]])
def test_nonsense_limits_are_refused(bad: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        edge_main(["run", str(sample_image()), *bad])
    assert caught.value.code == 2 and bad[0] in capsys.readouterr().err


def test_output_into_a_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    for index in range(6):
        shutil.copy(sample_image(), tmp_path / f"{index}.png")
    edge = subprocess.Popen([sys.executable, "-m", "edge_client.cli", "run", str(tmp_path), "--json", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    edge.stdout.readline()  # like `| head -1`: read one record, then close the pipe
    edge.stdout.close()
    _, stderr = edge.communicate(timeout=120)
    assert b"Traceback" not in stderr, stderr.decode()


def test_split_over_the_cloud_with_the_cli(server, capsys) -> None:
    assert edge_main(["run", str(sample_image()), "--cloud", f"127.0.0.1:{server.port}", "--strategy", "split", "--json"]) == 0
    [record] = _records(capsys)
    assert record["strategy"] == "split" and not record["fallback"] and record["bytes_up"] > 6272


def test_video_with_annotation_gives_one_record_per_frame(server, tmp_path: Path, capsys) -> None:
    video = still_video(tmp_path / "clip.avi", 5)
    out = tmp_path / "annotated.avi"
    assert edge_main(["run", str(video), "--cloud", f"127.0.0.1:{server.port}", "--strategy", "split", "--json", "--annotate", str(out), "--no-progress"]) == 0
    records = _records(capsys)
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]
    assert all(r["strategy"] == "split" for r in records)
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_missing_source_and_strategy_without_cloud_are_clear_errors(capsys) -> None:
    assert edge_main(["run", "/no/such/file.jpg"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert edge_main(["run", str(sample_image()), "--strategy", "split"]) == 2
    assert "needs --cloud" in capsys.readouterr().err


def test_fer_cloud_serves_then_drains_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_server.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() is not None else "timeout"
            time.sleep(0.1)
        port = json.loads(ready.read_text())["port"]
        health = subprocess.run([sys.executable, "-m", "cloud_server.cli", "health", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
        assert health.returncode == 0 and "SERVING" in health.stdout
        done = subprocess.run([sys.executable, "-m", "edge_client.cli", "run", str(sample_image()), "--cloud", f"127.0.0.1:{port}", "--strategy", "split", "--json"], capture_output=True, text=True, timeout=120)
        assert json.loads(done.stdout)["strategy"] == "split"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert '"event": "stopped"' in out
    gone = subprocess.run([sys.executable, "-m", "cloud_server.cli", "health", f"127.0.0.1:{port}", "--timeout-s", "1"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1


@pytest.mark.parametrize("command", ["fer-edge", "fer-cloud", "fer-bench", "fer-train"])
def test_every_command_explains_itself(command: str) -> None:
    module = {"fer-edge": "edge_client.cli", "fer-cloud": "cloud_server.cli", "fer-bench": "fer_bench.cli", "fer-train": "shared_model.training.cli"}[command]
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == 0 and "usage:" in done.stdout and "examples:" in done.stdout


def test_help_shows_each_default_once(capsys) -> None:
    with pytest.raises(SystemExit):
        edge_main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("default: auto with --cloud") == 1 and "else edge (default" not in text


def test_onnx_runtime_with_a_checkpoint_is_refused_not_ignored(capsys) -> None:
    from shared_model.checkpoint import default_weights_path

    assert edge_main(["run", str(sample_image()), "--runtime", "onnx", "--weights", str(default_weights_path())]) == 2
    assert "--onnx-dir" in capsys.readouterr().err


def test_blazeface_detector_from_the_cli(capsys) -> None:
    pytest.importorskip("ai_edge_litert", reason="BlazeFace needs the blazeface extra (ai-edge-litert)")
    assert edge_main(["run", str(sample_image()), "--detector", "blazeface", "--json"]) == 0
    [record] = _records(capsys)
    x, y, w, h = record["box"]
    assert abs(x - 177) < 15 and abs(y - 67) < 25 and 70 < w < 120  # the same face the Haar cascade finds
    assert record["label"] == "happy"
