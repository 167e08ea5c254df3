"""Datasets, training and evaluation on small real samples of FER2013."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shared_model.checkpoint import load_checkpoint, save_checkpoint
from shared_model.training.cli import main as train_main
from shared_model.config import FER2013_CLASSES, ModelConfig
from shared_model.training.datasets import (
    DatasetError,
    load_dataset,
    load_fer2013_csv,
    load_image_folder,
)
from shared_model.training.evaluation import classification_report
from shared_model.network import FERNet
from shared_model.training.fit import TrainSettings, fit


@pytest.fixture
def small_folder(fer2013_root: Path, tmp_path: Path) -> Path:
    """train/ and public_test/ with 4 real images per class each."""
    for split in ("train", "public_test"):
        for name in FER2013_CLASSES:
            target = tmp_path / "fer" / split / name
            target.mkdir(parents=True)
            for path in sorted((fer2013_root / split / name).glob("*.jpg"))[:4]:
                shutil.copy(path, target / path.name)
    return tmp_path / "fer"


def _write_csv(folder: Path, path: Path) -> None:
    import cv2

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for split, usage in (("train", "Training"), ("public_test", "PublicTest")):
            for code, name in enumerate(FER2013_CLASSES):
                for image in sorted((folder / split / name).glob("*.jpg")):
                    pixels = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
                    writer.writerow([code, " ".join(map(str, pixels.flatten())), usage])


def test_folder_names_map_to_fer2013_codes_not_alphabetical(small_folder: Path) -> None:
    data = load_image_folder(small_folder / "train", progress=False)
    assert data.class_names == FER2013_CLASSES
    for label, source in zip(data.labels.tolist(), data.sources):
        assert Path(source).parent.name == FER2013_CLASSES[label]
    assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (48, 48)
    assert data.class_counts() == [4] * 7


def test_csv_and_folder_give_the_same_faces(small_folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    _write_csv(small_folder, path)
    folder = load_image_folder(small_folder / "public_test", progress=False)
    table = load_fer2013_csv(path, "public_test", progress=False)
    assert torch.equal(table.labels, folder.labels)
    assert torch.equal(table.images, folder.images)
    assert len(load_dataset(path, "train", progress=False)) == 28


def test_bad_csv_rows_and_missing_folders_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(DatasetError, match="bad.csv:2"):
        load_fer2013_csv(path, "train", progress=False)
    with pytest.raises(DatasetError, match="no dataset folder"):
        load_image_folder(tmp_path / "nothing")


def test_other_datasets_bring_their_own_classes_and_sizes(tmp_path: Path) -> None:
    import cv2

    for name in ("contempt", "joy"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "x.png"), np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8))
    data = load_image_folder(tmp_path, progress=False)
    assert data.class_names == ("contempt", "joy") and data.images.shape == (2, 48, 48)


def test_evaluation_numbers_match_a_hand_count() -> None:
    names = ("a", "b", "c")
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    report = classification_report(labels, predictions, names)
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.per_class_accuracy == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0})
    assert report.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # F1: a = 2*1*(2/3)/(1+2/3) = 0.8; b = 2*(1/2)*(1/2)/1 = 0.5; c = 2*(1/2)*1/(3/2) = 2/3
    assert report.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_few_training_steps_lower_the_loss(small_folder: Path) -> None:
    data = load_image_folder(small_folder / "train", progress=False)
    model = FERNet().train()
    x = torch.nn.functional.interpolate(data.images[:16, None].float() / 255, size=64).expand(-1, 3, -1, -1)
    y = data.labels[:16]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7


class Interrupted(Exception):
    pass


def _interrupt_after_first_epoch(record) -> None:
    raise Interrupted


def test_fit_checkpoints_logs_and_resumes(small_folder: Path, tmp_path: Path) -> None:
    train = load_image_folder(small_folder / "train", progress=False)
    val = load_image_folder(small_folder / "public_test", progress=False)
    settings = TrainSettings(schedule="48:2,64:1", batch_size=8, seed=1, max_steps_per_epoch=2)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        fit(FERNet(), train, val, out, settings, progress=False, on_epoch=_interrupt_after_first_epoch)
    assert [int(r["epoch"]) for r in csv.DictReader((out / "log.csv").open())] == [1]
    assert not (out / "best.pt").exists()  # only epochs at the final size are candidates
    resumed = fit(FERNet(), train, val, out, settings, resume=True, progress=False)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    assert [r.size for r in resumed.history] == [48, 48, 64]
    assert (out / "curves.png").stat().st_size > 0
    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint.provenance["validation_size"] == 64 and 0 <= checkpoint.provenance["validation_accuracy"] <= 1
    assert checkpoint.provenance["epochs_trained"] == 3


def test_eval_cli_reports_json_accuracy(small_folder: Path, tmp_path: Path, capsys) -> None:
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    plot = tmp_path / "confusion.png"
    code = train_main(["eval", "--data", str(small_folder), "--split", "public_test", "--weights", str(weights), "--json", "--plot", str(plot), "--size", "64"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["accuracy"] <= 1 and report["count"] == 28
    assert sum(map(sum, report["confusion_matrix"])) == 28
    assert plot.stat().st_size > 0


def test_finetune_replaces_the_output_layer_for_new_classes(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("contempt", "joy", "calm"):
            (tmp_path / "other" / split / name).mkdir(parents=True)
            for i in range(4):
                cv2.imwrite(str(tmp_path / "other" / split / name / f"{i}.png"), rng.integers(0, 255, (64, 64), dtype=np.uint8))
    start = save_checkpoint(FERNet(), tmp_path / "start.pt")
    out = tmp_path / "finetuned"
    code = train_main(["finetune", "--data", str(tmp_path / "other"), "--weights", str(start), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--max-steps-per-epoch", "1"])
    assert code == 0
    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint.class_names == ("calm", "contempt", "joy")
    assert checkpoint.state_dict["tail.fc.weight"].shape == (3, 1024)
    assert checkpoint.provenance["recipe"]["lr"] == 0.001 and checkpoint.provenance["finetuned_from"]


def test_resume_with_a_longer_schedule_replans_the_learning_rate(small_folder: Path, tmp_path: Path) -> None:
    train = load_image_folder(small_folder / "train", progress=False)
    val = load_image_folder(small_folder / "public_test", progress=False)
    out = tmp_path / "run"
    fit(FERNet(), train, val, out, TrainSettings(schedule="48:2", batch_size=4, max_steps_per_epoch=4), progress=False)
    longer = fit(FERNet(), train, val, out, TrainSettings(schedule="48:4", batch_size=4, max_steps_per_epoch=4), resume=True, progress=False)
    assert [r.epoch for r in longer.history] == [1, 2, 3, 4]
    assert longer.history[2].lr > 1e-3  # the old one-cycle curve had ended (near 0) after epoch 2


def test_fit_can_start_from_a_checkpoint(small_folder: Path, tmp_path: Path) -> None:
    start = save_checkpoint(FERNet(), tmp_path / "start.pt")
    out = tmp_path / "continued"
    code = train_main(["fit", "--data", str(small_folder), "--out", str(out), "--init-weights", str(start), "--schedule", "48:1", "--batch-size", "8", "--max-steps-per-epoch", "1"])
    assert code == 0
    assert load_checkpoint(out / "best.pt").provenance["initialized_from"] == load_checkpoint(start).fingerprint


def test_init_weights_and_config_together_are_refused(small_folder: Path, tmp_path: Path, capsys) -> None:
    start = save_checkpoint(FERNet(), tmp_path / "start.pt")
    (tmp_path / "config.json").write_text(ModelConfig().to_json())
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", "--data", str(small_folder), "--out", str(tmp_path / "run"), "--init-weights", str(start), "--config", str(tmp_path / "config.json")])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_info_shows_every_generation_of_training(small_folder: Path, tmp_path: Path, capsys) -> None:
    common = ["--data", str(small_folder), "--batch-size", "8", "--max-steps-per-epoch", "1"]
    assert train_main(["fit", "--out", str(tmp_path / "first"), "--schedule", "48:2", *common]) == 0
    assert train_main(["fit", "--out", str(tmp_path / "second"), "--init-weights", str(tmp_path / "first" / "best.pt"), "--schedule", "64:1", "--lr", "0.02", *common]) == 0
    capsys.readouterr()
    assert train_main(["info", "--weights", str(tmp_path / "second" / "best.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    first = load_checkpoint(tmp_path / "first" / "best.pt")
    first_epochs = first.provenance["epochs_trained"]  # the epoch whose weights were kept
    assert "schedule 48:2" in runs[0] and "from scratch" in runs[0] and f": {first_epochs} epoch" in runs[0]
    assert "schedule 64:1" in runs[1] and f"from {first.fingerprint}" in runs[1] and "peak lr 0.02" in runs[1]
    assert any(line.startswith("total") and f"{first_epochs + 1} epochs" in line for line in lines)
    assert train_main(["info", "--weights", str(tmp_path / "second" / "best.pt"), "--json"]) == 0
    provenance = json.loads(capsys.readouterr().out)["provenance"]
    assert provenance["parent"]["recipe"]["schedule"] == "48:2"
