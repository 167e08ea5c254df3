"""The edge daemon and the cloud CLI as users run them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
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
    assert edge_main(["run", str(sample_image()), "--json", "--threads", "1", "--detector", "haar"]) == 0
    [record] = _records(capsys)
    assert record["strategy"] == "edge" and not record["fallback"]
    assert record["box"] == [177, 67, 93, 93]
    assert record["label"] in record["probabilities"] and abs(sum(record["probabilities"].values()) - 1) < 1e-3
    assert set(record["latency"]) == {"head", "encode", "network", "server", "attention", "tail", "total"}


def test_folder_with_a_corrupt_image_loses_nothing(tmp_path: Path, capsys) -> None:
    shutil.copy(sample_image(), tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cv2.imwrite(str(tmp_path / "c.png"), np.full((64, 64), 40, np.uint8))  # no face in it
    assert edge_main(["run", str(tmp_path), "--json", "--no-progress"]) == 1  # an input could not be read; the run went on
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


@pytest.mark.parametrize("flags, background", [([], True), (["--no-background-measuring"], False)])
def test_auto_measures_the_cloud_beside_local_answers_unless_told_not_to(server, tmp_path: Path, capsys, flags: list[str], background: bool) -> None:
    for index in range(2):
        shutil.copy(sample_image(), tmp_path / f"face{index}.jpg")
    # One face in flight: with two, the second face may be planned before the first has been measured.
    command = ["run", str(tmp_path), "--cloud", f"127.0.0.1:{server.port}", "--json", "--in-flight", "1", *flags]
    assert edge_main(command) == 0
    first, second = sorted(_records(capsys), key=lambda r: r["source"])
    assert first["auto"]["choice"] == "edge"  # the edge is measured first
    if background:  # the cloud is first measured beside the second face's local answer
        assert second["auto"]["choice"] == "edge" and second["auto"]["background"] == "cloud", second["auto"]
    else:  # on a face of its own
        assert second["auto"]["choice"] == "cloud" and second["auto"]["background"] is None, second["auto"]


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


# -- bad inputs: one line each, the run goes on ---------------------------------------------------

FACE = Path(__file__).parent / "data" / "faces" / "astronaut.png"
SECRET = "tok-5d1e8b-never-print-me"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` pixels (correct CRCs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_an_image_too_large_to_decode_is_one_error_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "a_bomb.png").write_bytes(_png_claiming(40000, 40000))  # cv2.imdecode raises cv2.error for it
    shutil.copy(FACE, tmp_path / "b_face.png")
    assert edge_main(["run", str(tmp_path), "--whole-image", "--json", "--no-progress", "--in-flight", "2"]) == 1
    bomb, face = _records(capsys)
    assert Path(bomb["source"]).name == "a_bomb.png" and bomb["label"] is None
    assert "a_bomb.png" in bomb["error"] and "too large" in bomb["error"]
    assert Path(face["source"]).name == "b_face.png" and face["error"] is None and face["label"]


def test_unreadable_files_and_broken_links_are_one_error_line_each(tmp_path: Path, capsys) -> None:
    locked = Path("/proc/sys/vm/drop_caches")  # write-only, even for root: reading it fails with EACCES
    try:
        locked.read_bytes()
        pytest.skip(f"{locked} is readable here, so no unreadable file can be made")
    except PermissionError:
        pass
    except OSError as error:
        pytest.skip(f"{locked} fails otherwise here ({error})")
    (tmp_path / "a_locked.png").symlink_to(locked)
    (tmp_path / "b_gone.png").symlink_to(tmp_path / "no_such_target.png")
    shutil.copy(FACE, tmp_path / "c_face.png")
    assert edge_main(["run", str(tmp_path), "--whole-image", "--json", "--no-progress"]) == 1
    records = _records(capsys)
    assert [Path(r["source"]).name for r in records] == ["a_locked.png", "b_gone.png", "c_face.png"]
    assert "cannot read" in records[0]["error"] and "permission denied" in records[0]["error"].lower()
    assert "cannot read" in records[1]["error"] and "no such file" in records[1]["error"].lower()
    assert records[2]["error"] is None and records[2]["label"]


def _empty_video(path: Path) -> Path:
    """A video file opened and released with no frame written."""
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64)).release()
    return path


@pytest.mark.parametrize("detection", [[], ["--whole-image"]])
def test_a_video_without_frames_is_one_error_line(tmp_path: Path, capsys, detection: list[str]) -> None:
    video = _empty_video(tmp_path / "empty.avi")
    assert edge_main(["run", str(video), "--json", "--no-progress", *detection]) == 1
    [record] = _records(capsys)
    assert record["source"] == str(video) and record["label"] is None and "no frame" in record["error"]


def test_a_stream_is_read_again_before_it_is_given_up(tmp_path: Path, capsys, caplog) -> None:
    """A stream URL (FFmpeg reads file:// URLs as streams) whose reads fail is retried, logged, then reported."""
    url = (tmp_path / "empty.avi").as_uri()
    _empty_video(tmp_path / "empty.avi")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="edge_client.sources"):
        assert edge_main(["run", url, "--json", "--no-progress", "--whole-image"]) == 1
    [record] = _records(capsys)
    assert record["source"] == url and "no frame" in record["error"]
    assert time.monotonic() - started >= 0.5  # read again for about a second, not given up at the first failure
    assert any("read again" in r.getMessage() for r in caplog.records)
    clip = still_video(tmp_path / "clip.avi", 3)
    assert edge_main(["run", clip.as_uri(), "--json", "--no-progress", "--whole-image"]) == 0
    assert [r["frame"] for r in _records(capsys)] == [0, 1, 2]


# -- TLS and the token -----------------------------------------------------------------------------

def test_a_client_certificate_without_a_ca_still_means_tls(server, tmp_path: Path, capsys) -> None:
    from servers import make_certificates

    from edge_client.transport import ClientSecurity

    certs = make_certificates(tmp_path)
    credentials = ClientSecurity(client_cert=certs["client.crt"], client_key=certs["client.key"]).channel_credentials()
    assert credentials is not None and "SSL" in type(credentials._credentials).__name__
    assert ClientSecurity().channel_credentials() is None  # no TLS option at all: the only plaintext case
    mutual = ["--tls-cert", str(certs["client.crt"]), "--tls-key", str(certs["client.key"])]
    # The plaintext server cannot answer a TLS client: the edge answers locally instead of speaking plaintext.
    assert edge_main(["run", str(FACE), "--whole-image", "--json", "--cloud", f"127.0.0.1:{server.port}", "--strategy", "split", "--timeout-ms", "2000", *mutual]) == 0
    [record] = _records(capsys)
    assert record["fallback"] and record["fallback_reason"] == "unavailable"
    assert edge_main(["run", str(FACE), "--cloud", f"127.0.0.1:{server.port}", "--strategy", "split", "--tls-cert", str(certs["client.crt"])]) == 2
    assert "--tls-key" in capsys.readouterr().err


def test_mutual_tls_with_the_system_roots(trained_model, tmp_path: Path, capsys) -> None:
    from fer_bench.loopback import start_server
    from servers import make_certificates

    certs = make_certificates(tmp_path)
    tls = start_server(trained_model, tls_cert=certs["server.crt"], tls_key=certs["server.key"], tls_client_ca=certs["ca.crt"])
    mutual = ["--tls-cert", str(certs["client.crt"]), "--tls-key", str(certs["client.key"])]
    command = ["run", str(FACE), "--whole-image", "--json", "--cloud", f"localhost:{tls.port}", "--strategy", "split", "--timeout-ms", "5000", "--threads", "1", *mutual]
    try:
        # The system's roots do not hold the test CA: refused, answered locally.
        assert edge_main([*command]) == 0
        [record] = _records(capsys)
        assert record["fallback"] and record["strategy"] == "edge"
        # With the test CA as the system's roots (gRPC reads them once per process: a new process), it connects.
        environment = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(certs["ca.crt"])}
        done = subprocess.run([sys.executable, "-m", "edge_client.cli", *command], capture_output=True, text=True, timeout=120, env=environment)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["strategy"] == "split" and not json.loads(done.stdout)["fallback"]
    finally:
        tls.stop_now()


def test_a_token_from_a_secret_file_loses_its_newline(trained_model, monkeypatch, capsys) -> None:
    from fer_bench.loopback import start_server

    guarded = start_server(trained_model, token=SECRET)
    monkeypatch.setenv("FER_CLOUD_TOKEN", f"  {SECRET}\n")  # as a Kubernetes secret mounted as a variable
    try:
        assert edge_main(["run", str(FACE), "--whole-image", "--json", "--cloud", f"127.0.0.1:{guarded.port}", "--strategy", "split"]) == 0
        [record] = _records(capsys)
        assert record["strategy"] == "split" and not record["fallback"]
        assert edge_main(["run", str(FACE), "--whole-image", "--json", "--cloud", f"127.0.0.1:{guarded.port}", "--strategy", "split", "--token", f"{SECRET}\r\n"]) == 0
        assert not _records(capsys)[0]["fallback"]
    finally:
        guarded.stop_now()


@pytest.mark.parametrize("token", [f"{SECRET}\x01x", f"{SECRET[:4]}\n{SECRET[4:]}", f"{SECRET}é"])
def test_a_token_no_header_can_carry_is_refused_without_printing_it(token: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FER_CLOUD_TOKEN", token)
    assert edge_main(["run", str(FACE), "--whole-image", "--cloud", "127.0.0.1:1", "--strategy", "split"]) == 2
    captured = capsys.readouterr()
    assert "token" in captured.err and not captured.out
    assert SECRET not in captured.err and SECRET[4:] not in captured.err


def test_no_repr_of_the_edge_shows_the_token(monkeypatch) -> None:
    from edge_client.cli import build_parser
    from edge_client.transport import ClientSecurity, CloudClient

    monkeypatch.setenv("FER_CLOUD_TOKEN", SECRET)
    args = build_parser().parse_args(["run", "x.jpg"])
    security = ClientSecurity(token=args.token)
    client = CloudClient("127.0.0.1:1", "v", security)
    try:
        for shown in (repr(args), str(args), repr(security), str(security), repr(client), repr(vars(args))):
            assert SECRET not in shown
        assert client.metadata == (("authorization", f"Bearer {SECRET}"),)  # what goes on the wire is intact
    finally:
        client.close()


# -- annotated output ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["out.gif", "out", "out.webm"])
def test_an_annotation_format_that_cannot_be_written_fails_at_once(tmp_path: Path, capsys, name: str) -> None:
    video = still_video(tmp_path / "clip.avi", 2)
    assert edge_main(["run", str(video), "--whole-image", "--json", "--no-progress", "--annotate", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert not captured.out  # refused before anything was classified
    assert "--annotate" in captured.err and name in captured.err


def test_annotated_video_keeps_frames_of_another_size(tmp_path: Path, capsys) -> None:
    shutil.copy(FACE, tmp_path / "a.png")
    face = cv2.imread(str(FACE))
    cv2.imwrite(str(tmp_path / "b.png"), cv2.resize(face, (face.shape[1] // 2, face.shape[0] // 3)))
    out = tmp_path / "annotated.avi"
    assert edge_main(["run", str(tmp_path), "--whole-image", "--json", "--no-progress", "--annotate", str(out)]) == 0
    assert len(_records(capsys)) == 2
    capture = cv2.VideoCapture(str(out))
    frames = [capture.read() for _ in range(3)]
    assert [ok for ok, _ in frames] == [True, True, False]
    assert frames[1][1].shape == frames[0][1].shape  # the smaller image, scaled to the first one's size


def test_an_annotation_image_holds_one_frame(tmp_path: Path, capsys) -> None:
    out = tmp_path / "annotated.png"
    assert edge_main(["run", str(FACE), "--whole-image", "--json", "--annotate", str(out)]) == 0
    assert len(_records(capsys)) == 1 and cv2.imread(str(out)).shape == cv2.imread(str(FACE)).shape
    video = still_video(tmp_path / "clip.avi", 3)
    for source in (video, FACE.parent):  # several frames would overwrite each other in one image
        assert edge_main(["run", str(source), "--whole-image", "--json", "--no-progress", "--annotate", str(tmp_path / "many.png")]) == 2
        captured = capsys.readouterr()
        assert not captured.out and "--annotate" in captured.err and "video" in captured.err
    assert not (tmp_path / "many.png").exists()
