"""Confidence that means what it says: intervals, calibration error, temperature, the held-out slice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from shared_model.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from shared_model.config import ConfigError, ModelConfig
from shared_model.network import FERNet
from shared_model.training.calibration import (
    calibration_holdout,
    ece_interval,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from shared_model.training.cli import main as train_main
from shared_model.training.datasets import FaceDataset
from shared_model.training.evaluation import classification_report, wilson_interval


def test_wilson_interval_matches_the_published_example() -> None:
    # Newcombe, Statistics in Medicine 17 (1998), table I: 81 of 263 -> 0.2553 to 0.3662.
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-5) and high == pytest.approx(0.3662, abs=5e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_reports_carry_the_interval_of_every_accuracy() -> None:
    labels = torch.tensor([0] * 10 + [1] * 10)
    predictions = torch.tensor([0] * 8 + [1] * 2 + [1] * 5 + [0] * 5)
    report = classification_report(labels, predictions, ("a", "b"))
    assert report.accuracy == pytest.approx(13 / 20)
    assert report.accuracy_interval == pytest.approx(wilson_interval(13, 20))
    assert report.per_class_recall_interval["a"] == pytest.approx(wilson_interval(8, 10))
    assert report.to_dict()["accuracy_interval_95"] == pytest.approx(list(wilson_interval(13, 20)))


def test_expected_calibration_error_by_hand() -> None:
    # Four faces: two at confidence 0.9 (one right), two at 0.6 (both right).
    probabilities = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 1])
    bins = reliability_bins(probabilities, labels, bins=10)
    assert bins.counts[8] == 2 and bins.counts[5] == 2 and bins.total == 4
    # bin (0.8, 0.9]: |0.5 - 0.9| = 0.4; bin (0.5, 0.6]: |1.0 - 0.6| = 0.4; each half the faces.
    assert expected_calibration_error(bins) == pytest.approx(0.4)
    assert math.isnan(bins.accuracy[0])


def _faces_with_confidence(confidence: Tensor, accuracy: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two-class probabilities with top probability ``confidence``, right with probability ``accuracy``."""
    probabilities = torch.stack([confidence, 1 - confidence], dim=1)
    labels = (torch.rand(len(confidence), generator=generator) >= accuracy).long()
    return probabilities, labels


def test_ece_interval_holds_the_true_error_and_narrows_with_more_faces() -> None:
    generator = torch.Generator().manual_seed(1)
    widths = {}
    for faces in (400, 40000):
        # Half the faces over-confident (0.9, right 0.7 of the time), half under-confident (0.6, right 0.8 of the
        # time): every face is 0.2 off, so the true ECE is 0.2 although the two errors cancel on average.
        confidence = torch.tensor([0.9, 0.6]).repeat(faces // 2)
        probabilities, labels = _faces_with_confidence(confidence, torch.tensor([0.7, 0.8]).repeat(faces // 2), generator)
        low, high = ece_interval(probabilities, labels)
        point = expected_calibration_error(reliability_bins(probabilities, labels))
        assert low <= point <= high and low <= 0.2 <= high
        widths[faces] = high - low
    # A 100 times larger sample: the spread shrinks about tenfold.
    assert 5 < widths[400] / widths[40000] < 20
    # Calibrated faces (right as often as their confidence says): the interval sits near zero.
    confidence = 0.5 + 0.5 * torch.rand(40000, generator=generator)
    probabilities, labels = _faces_with_confidence(confidence, confidence, generator)
    assert ece_interval(probabilities, labels)[1] < 0.02


def test_fitted_temperature_recovers_the_one_that_made_the_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 7, generator=generator) * 3
    true_temperature = 2.5
    labels = torch.multinomial((logits / true_temperature).softmax(dim=1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)
    overconfident = reliability_bins(logits.softmax(dim=1), labels)
    calibrated = reliability_bins((logits / fit_temperature(logits, labels)).softmax(dim=1), labels)
    assert expected_calibration_error(calibrated) < 0.02 < expected_calibration_error(overconfident)


def _dataset(counts: list[int]) -> FaceDataset:
    labels = torch.cat([torch.full((n,), code) for code, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1).expand(-1, 4, 4)
    return FaceDataset(images.contiguous(), labels, tuple(f"c{i}" for i in range(len(counts))), [f"f{i}" for i in range(len(labels))])


def test_the_held_out_slice_is_stratified_disjoint_and_always_the_same() -> None:
    data = _dataset([200, 20, 3, 1])
    train, held = calibration_holdout(data, 0.1)
    assert held.class_counts() == [20, 2, 0, 0]  # round(10 %); a class keeps at least one training face
    assert len(train) + len(held) == len(data)
    assert not set(train.sources) & set(held.sources)
    again_train, again_held = calibration_holdout(data, 0.1)
    assert again_held.sources == held.sources
    _, nothing = calibration_holdout(data, 0.0)
    assert len(nothing) == 0
    with pytest.raises(ValueError):
        calibration_holdout(data, 1.0)


def test_a_temperature_changes_probabilities_not_predictions_nor_old_fingerprints() -> None:
    torch.manual_seed(0)
    model = FERNet().eval()
    assert "temperature" not in ModelConfig().to_dict()  # configs without one keep their fingerprint
    x = torch.randn(4, 3, 64, 64)
    before = model(x)
    plain_fingerprint = model_fingerprint(model)
    model.calibrate(2.0)
    after = model(x)
    torch.testing.assert_close(after, before / 2.0)
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert model_fingerprint(model) != plain_fingerprint
    assert ModelConfig.from_json(model.config.to_json()).temperature == 2.0
    with pytest.raises(ConfigError, match="temperature"):
        ModelConfig(temperature=0.0)


def test_a_calibrated_checkpoint_loads_with_its_temperature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FERNet().eval()
    model.calibrate(1.7)
    path = save_checkpoint(model, tmp_path / "calibrated.pt")
    loaded = load_checkpoint(path).build_model()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.config.temperature == 1.7


def _dark_and_light_faces(root: Path) -> Path:
    """train/ (40 a class) and public_test/ (6 a class) of two classes of noisy gray faces."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 40), ("public_test", 6)):
        for code, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                face = np.clip(rng.normal(60 + 120 * code, 40, (48, 48)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i}.png"), face)
    return root


def test_calibrate_cli_fits_on_the_held_out_slice_and_eval_reports_both_views(tmp_path: Path, capsys) -> None:
    root = _dark_and_light_faces(tmp_path / "data")
    model = FERNet(ModelConfig(class_names=("dark", "light"), input_size=64)).eval()
    weights = save_checkpoint(model, tmp_path / "w.pt", {"recipe": {"calibration_fraction": 0.25}})
    out = tmp_path / "calibrated.pt"
    assert train_main(["calibrate", "--data", str(root), "--weights", str(weights), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 20 and result["fraction"] == 0.25
    assert result["nll_after"] <= result["nll_before"] + 1e-9
    calibrated = load_checkpoint(out)
    assert calibrated.config.temperature == pytest.approx(result["temperature"])
    assert calibrated.provenance["calibration"]["temperature"] == pytest.approx(result["temperature"])
    plot = tmp_path / "reliability.png"
    code = train_main(["eval", "--data", str(root / "public_test"), "--weights", str(out), "--json", "--reliability", str(plot)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["temperature"] == pytest.approx(result["temperature"])
    assert report["count"] == 12 and report["flip_tta"]["count"] == 12
    assert 0.0 <= report["ece"] <= 1.0 and 0.0 <= report["flip_tta"]["ece"] <= 1.0
    assert report["ece_interval_95"][0] <= report["ece_interval_95"][1] and len(report["flip_tta"]["ece_interval_95"]) == 2
    low, high = report["accuracy_interval_95"]
    assert low <= report["accuracy"] <= high
    assert plot.stat().st_size > 0


def test_calibrate_refuses_weights_trained_on_all_their_data(tmp_path: Path, capsys) -> None:
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    code = train_main(["calibrate", "--data", str(tmp_path), "--weights", str(weights), "--out", str(tmp_path / "c.pt")])
    assert code == 2
    assert "records no held-out slice" in capsys.readouterr().err


def test_calibrate_refuses_data_whose_slice_is_not_the_one_training_left_out(tmp_path: Path, capsys) -> None:
    root = _dark_and_light_faces(tmp_path / "data")
    model = FERNet(ModelConfig(class_names=("dark", "light"), input_size=64))
    # Trained, by its record, on a split that left out 30 images: this one leaves out 20 (a quarter of 80).
    weights = save_checkpoint(model, tmp_path / "w.pt", {"recipe": {"calibration_fraction": 0.25}, "calibration_images": 30})
    assert train_main(["calibrate", "--data", str(root), "--weights", str(weights), "--out", str(tmp_path / "c.pt")]) == 2
    assert "training held out 30 images, this data gives 20" in capsys.readouterr().err
    # The same classes in another order would pair every label with the other class's score.
    swapped = save_checkpoint(FERNet(ModelConfig(class_names=("light", "dark"), input_size=64)), tmp_path / "s.pt",
                              {"recipe": {"calibration_fraction": 0.25}})
    assert train_main(["calibrate", "--data", str(root), "--weights", str(swapped), "--out", str(tmp_path / "c.pt")]) == 2
    assert "not the model's, in its order" in capsys.readouterr().err
