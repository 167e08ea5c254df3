"""fer-train fit --teacher: soft labels computed once, trained towards, recorded and kept with the run."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shared_model.checkpoint import load_checkpoint, save_checkpoint
from shared_model.config import ModelConfig
from shared_model.network import FERNet
from shared_model.training.cli import main as train_main
from shared_model.training.datasets import FaceDataset, load_image_folder
from shared_model.training import distillation
from shared_model.training.calibration import calibration_holdout
from shared_model.training.distillation import SOFT_LABELS_FILE, distillation_loss, teacher_probabilities
from shared_model.training.evaluation import predict_probabilities, predict_scores
from shared_model.training.fit import TrainSettings, fit, initial_model

CLASSES = ("dark", "light")


def _faces(root: Path, per_class: dict[str, int]) -> Path:
    """Class folders of noisy dark and light 48x48 faces."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for code, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                face = np.full((48, 48), 60 + 120 * code, np.uint8) + rng.integers(0, 30, (48, 48), dtype=np.uint8)
                cv2.imwrite(str(folder / f"{i}.png"), face)
    return root


def test_the_loss_is_the_kl_divergence_scaled_by_the_squared_temperature() -> None:
    soft = torch.tensor([[0.5, 0.5]])
    temperature = 2.0
    logits = temperature * torch.tensor([[math.log(0.25), math.log(0.75)]])  # softmax(logits / T) = (0.25, 0.75)
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert distillation_loss(logits, soft, temperature).item() == pytest.approx(temperature**2 * by_hand, rel=1e-5)
    matching = temperature * torch.tensor([[math.log(0.5), math.log(0.5)]])
    assert distillation_loss(matching, soft, temperature).item() == pytest.approx(0.0, abs=1e-6)


def _decided_teacher(seed: int) -> FERNet:
    """A network whose probabilities differ between faces and between seeds.

    A fresh one gives every face nearly the same scores: its normalization
    statistics fit no input, so activations fade layer by layer. One pass in
    training mode sets them.
    """
    teacher = initial_model(ModelConfig(class_names=CLASSES), seed)
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # the statistics of the one batch
    with torch.no_grad():
        teacher.train()(torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(seed)))
    return teacher.eval()


def test_soft_labels_average_a_face_with_its_mirror_and_the_teachers(tmp_path: Path) -> None:
    faces = load_image_folder(_faces(tmp_path, {"train": 3}) / "train", progress=False)
    faces.images[:, :, :20] //= 3  # asymmetric faces, so that a face and its mirror look different
    mirrored = FaceDataset(faces.images.flip(dims=[2]), faces.labels, faces.class_names, faces.sources)
    teachers = [_decided_teacher(seed) for seed in (0, 1)]
    assert not torch.allclose(predict_scores(teachers[0], faces), predict_scores(teachers[0], mirrored), atol=1e-3)
    soft = teacher_probabilities(teachers, faces, temperature=2.0)
    assert soft.shape == (6, 2) and torch.allclose(soft.sum(1), torch.ones(6))
    assert torch.allclose(soft, teacher_probabilities(teachers, mirrored, temperature=2.0), atol=1e-5)
    each = [teacher_probabilities([teacher], faces, temperature=2.0) for teacher in teachers]
    assert not torch.allclose(each[0], each[1], atol=1e-3)
    assert torch.allclose(soft, (each[0] + each[1]) / 2, atol=1e-6)
    hotter = teacher_probabilities(teachers[:1], faces, temperature=8.0)
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert bool((entropy(hotter) > entropy(each[0])).all())  # a higher temperature softens every face's labels


def test_soft_labels_come_from_raw_scores_whatever_the_teachers_calibration(tmp_path: Path) -> None:
    faces = load_image_folder(_faces(tmp_path, {"train": 3}) / "train", progress=False)
    teacher = _decided_teacher(0)
    raw = teacher_probabilities([teacher], faces, temperature=2.0)
    teacher.calibrate(3.0)
    assert not torch.allclose(predict_scores(teacher, faces).softmax(1), (predict_scores(teacher, faces) * 3).softmax(1))
    assert torch.allclose(teacher_probabilities([teacher], faces, temperature=2.0), raw, atol=1e-5)


def test_soft_labels_stay_with_their_faces_through_the_held_out_slice(tmp_path: Path) -> None:
    faces = load_image_folder(_faces(tmp_path, {"train": 10}) / "train", progress=False)
    marks = torch.arange(len(faces), dtype=torch.float32)  # each face's soft labels carry its index
    faces = faces.with_soft_labels(torch.stack([marks, -marks], dim=1))
    trained, held_out = calibration_holdout(faces, 0.2)
    assert len(held_out) == 4
    for part in (trained, held_out):
        for source, soft in zip(part.sources, part.soft_labels):
            assert faces.sources[int(soft[0])] == source


def _predicted(model: FERNet, faces: FaceDataset) -> list[int]:
    return predict_probabilities(model, faces, 64).argmax(1).tolist()


@pytest.mark.parametrize("weight, wanted", [(0.0, 0), (1.0, 1)])
def test_the_weight_decides_between_the_labels_and_the_soft_labels(tmp_path: Path, weight: float, wanted: int) -> None:
    root = _faces(tmp_path / "data", {"train": 8, "public_test": 2})
    train = load_image_folder(root / "train", progress=False)
    train.labels.zero_()  # the labels say "dark" for every face, the soft labels "light"
    train = train.with_soft_labels(torch.tensor([[0.05, 0.95]]).repeat(len(train), 1))
    val = load_image_folder(root / "public_test", progress=False)
    settings = TrainSettings(
        schedule="64:6", batch_size=8, lr=0.05, ema_decay=0.0, calibration_fraction=0.0, distillation_weight=weight,
        max_steps_per_epoch=2,
    )
    model = initial_model(ModelConfig(class_names=CLASSES, input_size=64), 0)
    fit(model, train, val, tmp_path / "run", settings, progress=False)
    assert _predicted(model, train) == [wanted] * len(train)


def test_distillation_without_soft_labels_is_refused(tmp_path: Path) -> None:
    root = _faces(tmp_path / "data", {"train": 4, "public_test": 1})
    train, val = (load_image_folder(root / split, progress=False) for split in ("train", "public_test"))
    settings = TrainSettings(schedule="64:1", batch_size=4, distillation_weight=0.5, calibration_fraction=0.0)
    with pytest.raises(ValueError, match="soft labels"):
        fit(FERNet(ModelConfig(class_names=CLASSES)), train, val, tmp_path / "run", settings, progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        train.with_soft_labels(torch.full((3, 2), 0.5))


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("the teachers labelled the faces again")


def test_fit_with_a_teacher_records_it_keeps_its_soft_labels_and_refuses_another(
    tmp_path: Path, capsys, monkeypatch,
) -> None:
    root = _faces(tmp_path / "data", {"train": 6, "public_test": 2})
    teacher = save_checkpoint(initial_model(ModelConfig(class_names=CLASSES), 3), tmp_path / "teacher.pt")
    other = save_checkpoint(initial_model(ModelConfig(class_names=CLASSES), 4), tmp_path / "other.pt")
    out = tmp_path / "run"
    common = ["fit", "--data", str(root), "--out", str(out), "--schedule", "64:1", "--batch-size", "4",
              "--max-steps-per-epoch", "1", "--calibration-fraction", "0"]
    assert train_main([*common, "--teacher", str(teacher), "--distillation-weight", "0.7"]) == 0
    recipe = load_checkpoint(out / "best.pt").provenance["recipe"]
    fingerprint = load_checkpoint(teacher).fingerprint
    assert recipe["teachers"] == [fingerprint] and recipe["distillation_weight"] == 0.7
    soft_labels = out / SOFT_LABELS_FILE
    written = soft_labels.stat().st_mtime_ns
    capsys.readouterr()
    assert train_main(["info", "--weights", str(out / "best.pt")]) == 0
    assert f"distilled from {fingerprint} (weight 0.7" in capsys.readouterr().out
    # Resumed with a longer schedule: the soft labels are read back, not computed again.
    with monkeypatch.context() as patch:
        patch.setattr(distillation, "teacher_probabilities", _never_called)
        resumed = [*common, "--teacher", str(teacher), "--distillation-weight", "0.7", "--resume"]
        assert train_main([arg if arg != "64:1" else "64:2" for arg in resumed]) == 0
    assert soft_labels.stat().st_mtime_ns == written
    assert (out / "log.csv").read_text().count("\n") == 3  # the header and both epochs: it did train on
    # Another teacher would mix two runs' targets: refused, naming the setting, before it labels any face.
    capsys.readouterr()
    assert train_main([*common, "--teacher", str(other), "--distillation-weight", "0.7", "--resume"]) == 2
    assert "teachers differ" in capsys.readouterr().err
    assert soft_labels.stat().st_mtime_ns == written


def test_bad_distillation_options_are_named(tmp_path: Path, capsys) -> None:
    root = _faces(tmp_path / "data", {"train": 2, "public_test": 1})
    teacher = save_checkpoint(initial_model(ModelConfig(class_names=CLASSES), 3), tmp_path / "teacher.pt")
    stranger = save_checkpoint(initial_model(ModelConfig(), 3), tmp_path / "seven_classes.pt")
    common = ["fit", "--data", str(root), "--out", str(tmp_path / "run"), "--schedule", "64:1"]
    assert train_main([*common, "--teacher", str(teacher), "--distillation-weight", "0"]) == 2
    assert "--distillation-weight" in capsys.readouterr().err
    assert train_main([*common, "--teacher", str(teacher), "--distillation-temperature", "-1"]) == 2
    assert "--distillation-temperature" in capsys.readouterr().err
    assert train_main([*common, "--teacher", str(teacher), "--teacher", str(stranger)]) == 2
    assert "classes" in capsys.readouterr().err
    assert not (tmp_path / "run" / SOFT_LABELS_FILE).exists()  # refused before the first teacher labelled a face
    assert train_main([*common, "--distillation-weight", "0.5"]) == 2
    assert "need --teacher" in capsys.readouterr().err
    assert train_main([*common, "--teacher", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_runs_recorded_before_distillation_existed_still_match(tmp_path: Path) -> None:
    recorded = TrainSettings(schedule="112:12").to_dict()
    for key in ("distillation_weight", "distillation_temperature", "teachers"):
        del recorded[key]
    assert TrainSettings(schedule="112:12").differences(recorded) == []
    assert TrainSettings(schedule="112:12", distillation_weight=0.5, teachers=("abc",)).differences(recorded) == [
        "distillation_weight", "teachers",
    ]
