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
from shared_model.training.fit import STATE_FILE, TrainSettings, fit, initial_model


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
    assert report.per_class_recall == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0})
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


def test_an_interrupted_and_resumed_run_trains_as_one_that_ran_through(small_folder: Path, tmp_path: Path) -> None:
    train = load_image_folder(small_folder / "train", progress=False)
    val = load_image_folder(small_folder / "public_test", progress=False)
    settings = TrainSettings(schedule="48:2", batch_size=8, seed=2, max_steps_per_epoch=2, calibration_fraction=0)
    through = fit(initial_model(ModelConfig(), 2), train, val, tmp_path / "through", settings, progress=False)
    with pytest.raises(Interrupted):
        fit(initial_model(ModelConfig(), 2), train, val, tmp_path / "resumed", settings, progress=False,
            on_epoch=_interrupt_after_first_epoch)
    torch.rand(100)  # the process's generator moved on meanwhile
    resumed = fit(FERNet(), train, val, tmp_path / "resumed", settings, resume=True, progress=False)
    for a, b in zip(through.history, resumed.history):
        assert (a.train_loss, a.val_loss, a.lr) == pytest.approx((b.train_loss, b.val_loss, b.lr), rel=1e-5)
    weights = [load_checkpoint(tmp_path / run / "best.pt").state_dict for run in ("through", "resumed")]
    assert all(torch.allclose(weights[0][name].float(), weights[1][name].float(), atol=1e-6) for name in weights[0])


def test_a_resumed_run_refuses_other_settings_and_chooses_its_best_at_the_new_final_size(
    small_folder: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    train = load_image_folder(small_folder / "train", progress=False)
    val = load_image_folder(small_folder / "public_test", progress=False)
    settings = TrainSettings(schedule="48:1", batch_size=8, seed=1, max_steps_per_epoch=1, calibration_fraction=0)
    out = tmp_path / "run"
    fit(FERNet(), train, val, out, settings, progress=False)
    # Another learning rate would go on under the saved optimizer while best.pt recorded the new one: refused.
    with pytest.raises(ValueError, match="lr differ"):
        fit(FERNet(), train, val, out, replace(settings, lr=0.05, schedule="48:1,64:1"), resume=True, progress=False)
    # A longer schedule is allowed. Its final size is 64, so a perfect score at 48 must not keep best.pt.
    state = torch.load(out / STATE_FILE, weights_only=False)
    torch.save({**state, "best_accuracy": 1.0}, out / STATE_FILE)
    longer = fit(FERNet(), train, val, out, replace(settings, schedule="48:1,64:1"), resume=True, progress=False)
    assert longer.best_epoch == 2 and load_checkpoint(out / "best.pt").provenance["validation_size"] == 64


def test_initial_weights_depend_on_the_seed_alone() -> None:
    torch.manual_seed(123)
    first = initial_model(ModelConfig(), 0).state_dict()
    torch.rand(1000)  # whatever ran before in the process
    again = initial_model(ModelConfig(), 0).state_dict()
    other = initial_model(ModelConfig(), 1).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_a_named_split_that_is_missing_is_an_error_not_the_whole_folder(small_folder: Path) -> None:
    with pytest.raises(DatasetError, match="no val/ folder .*public_test, train"):
        load_dataset(small_folder, "val", progress=False)


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
    assert longer.history[2].lr > 1e-3  # mid-cosine of the 4-epoch plan, where the 2-epoch plan had reached ~0


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


FACES = Path(__file__).parent / "data" / "faces"


def _class_folders(root: Path, layout: dict[str, list[str]]) -> Path:
    """Real face images (tests/data/faces) copied into root/<folder>/."""
    for folder, stems in layout.items():
        (root / folder).mkdir(parents=True)
        for stem in stems:
            shutil.copy(FACES / f"{stem}.png", root / folder / f"{stem}.png")
    return root


def test_classes_match_by_name_synonym_and_class_map() -> None:
    from shared_model.training.datasets import NO_DATASET_CLASS, NOT_A_MODEL_CLASS, match_classes

    match = match_classes(["Anger", "disgusted", "fearful", "Happiness", "sadness", "surprised", "contempt", "calm"], FER2013_CLASSES)
    assert match.mapping == {"Anger": "angry", "disgusted": "disgust", "fearful": "fear", "Happiness": "happy", "sadness": "sad", "surprised": "surprise"}
    assert match.left_out_dataset_classes == {"contempt": NOT_A_MODEL_CLASS, "calm": NOT_A_MODEL_CLASS}
    assert match.left_out_model_classes == {"neutral": NO_DATASET_CLASS}
    assert match.present_classes == FER2013_CLASSES[:6]
    mapped = match_classes(["calm", "sadness"], FER2013_CLASSES, {"calm": "neutral", "sadness": ""})
    assert mapped.mapping == {"calm": "neutral"} and "sadness" in mapped.left_out_dataset_classes
    # A model fine-tuned on a dataset with other names matches FER2013 folders the other way round.
    assert match_classes(["angry", "contemptuous"], ("anger", "contempt", "joy")).mapping == {"angry": "anger", "contemptuous": "contempt"}


def test_class_maps_are_parsed_and_checked(tmp_path: Path) -> None:
    from shared_model.training.datasets import match_classes, parse_class_map

    assert parse_class_map(" joy=happy , calm=neutral,x= ") == {"joy": "happy", "calm": "neutral", "x": ""}
    (tmp_path / "map.json").write_text('{"joy": "happy", "calm": null}')
    assert parse_class_map(str(tmp_path / "map.json")) == {"joy": "happy", "calm": ""}
    for bad, message in (("joy", "not FOLDER=CLASS"), ("joy=happy,joy=sad", "twice"), ("=happy", "not FOLDER=CLASS"), (",", "empty")):
        with pytest.raises(DatasetError, match=message):
            parse_class_map(bad)
    (tmp_path / "list.json").write_text('["joy", "happy"]')
    with pytest.raises(DatasetError, match="one JSON object"):
        parse_class_map(str(tmp_path / "list.json"))
    with pytest.raises(DatasetError, match="'joyful', not a class of the data"):
        match_classes(["joy"], FER2013_CLASSES, {"joyful": "happy"})
    with pytest.raises(DatasetError, match="'happiness', not a class of the model"):
        match_classes(["joy"], FER2013_CLASSES, {"joy": "happiness"})


def test_eval_on_other_folder_names_reports_what_was_left_out(tmp_path: Path, capsys) -> None:
    data = _class_folders(tmp_path / "ck", {
        "anger": ["astronaut", "astronaut_flipped"],
        "sadness": ["astronaut_darker"],
        "Happy": ["astronaut_brighter"],
        "contempt": ["astronaut_rotated_cw"],
        "joy": ["astronaut_rotated_ccw"],
    })
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    common = ["eval", "--data", str(data), "--weights", str(weights), "--size", "64", "--threads", "1"]
    assert train_main([*common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 4  # anger 2, sadness 1, Happy 1; contempt and joy left out
    assert report["class_mapping"] == {"anger": "angry", "sadness": "sad", "Happy": "happy"}
    assert report["present_classes"] == ["angry", "happy", "sad"]
    assert set(report["left_out"]["dataset_classes"]) == {"contempt", "joy"}
    assert list(report["left_out"]["model_classes"]) == ["disgust", "fear", "surprise", "neutral"]
    rows = report["confusion_matrix"]
    assert [sum(r) for r in rows] == [2, 0, 0, 1, 1, 0, 0]
    restricted = report["restricted_to_present_classes"]
    present_columns = [FER2013_CLASSES.index(c) for c in report["present_classes"]]
    assert sum(map(sum, restricted["confusion_matrix"])) == 4
    assert all(v == 0 for row in restricted["confusion_matrix"] for j, v in enumerate(row) if j not in present_columns)
    assert restricted["accuracy"] >= report["accuracy"]  # restricting can only turn wrong answers right

    assert train_main([*common, "--class-map", "joy=happy,anger=", "--json"]) == 0
    mapped = json.loads(capsys.readouterr().out)
    assert mapped["count"] == 3 and mapped["class_mapping"] == {"joy": "happy", "sadness": "sad", "Happy": "happy"}
    assert mapped["left_out"]["dataset_classes"]["anger"] == "left out by the class map"
    assert "angry" in mapped["left_out"]["model_classes"]

    assert train_main(common) == 0
    printed = capsys.readouterr().out
    assert "left out: data class 'contempt'" in printed and "left out: model class 'neutral'" in printed
    assert "anger -> angry" in printed and "prediction restricted to the 3 classes present" in printed


def test_restricted_accuracy_is_the_argmax_over_present_classes() -> None:
    from shared_model.training.evaluation import evaluation_from_probabilities

    names = ("a", "b", "c")
    labels = torch.tensor([0, 0, 1])  # c is not in the data
    probabilities = torch.tensor([[0.4, 0.1, 0.5], [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    evaluation = evaluation_from_probabilities(labels, probabilities, names)
    assert evaluation.present_classes == ("a", "b")
    assert evaluation.report.accuracy == pytest.approx(1 / 3)  # predictions c, a, c
    assert evaluation.restricted.accuracy == pytest.approx(1.0)  # predictions a, a, b
    assert evaluation.to_dict()["restricted_to_present_classes"]["accuracy"] == pytest.approx(1.0)


def test_eval_says_clearly_when_no_folder_is_a_model_class(tmp_path: Path, capsys) -> None:
    data = _class_folders(tmp_path / "other", {"calm": ["astronaut"], "contempt": ["astronaut_flipped"]})
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    assert train_main(["eval", "--data", str(data), "--weights", str(weights), "--size", "64"]) == 2
    error = capsys.readouterr().err
    assert "none of the data's classes (calm, contempt) is a class of the model" in error and "--class-map" in error
    assert train_main(["eval", "--data", str(data), "--weights", str(weights), "--class-map", "calm"]) == 2
    assert "not FOLDER=CLASS" in capsys.readouterr().err


def test_epoch_speed_measures_both_checkouts_in_turn(small_folder: Path, tmp_path: Path) -> None:
    from fer_bench.measure import training_speed

    root = Path(training_speed.__file__).resolve().parents[2]
    out = tmp_path / "speed.csv"
    assert training_speed.main(["--data", str(small_folder), "--baseline", str(root), "--schedule", "32:1",
                                "--rounds", "2", "--threads", "1", "--batch-size", "8", "--out", str(out)]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["checkout"], row["round"]) for row in rows] == [("before", "0"), ("after", "0"), ("after", "1"), ("before", "1")]
    assert all(0 < float(row["epoch_seconds"]) <= float(row["process_seconds"]) for row in rows)


def test_epoch_speed_refuses_a_baseline_that_is_no_checkout(tmp_path: Path, capsys) -> None:
    from fer_bench.measure import training_speed

    with pytest.raises(SystemExit) as stopped:
        training_speed.main(["--data", str(tmp_path), "--baseline", str(tmp_path), "--out", str(tmp_path / "x.csv")])
    assert stopped.value.code == 2
    assert "is not a checkout of this project" in capsys.readouterr().err


def test_evaluation_sees_the_pixels_the_edge_sends() -> None:
    """The accuracy fer-train eval reports is the deployed path's: the same uint8 resize, to the grey level."""
    import cv2

    from shared_model.preprocessing import gray_batch_to_tensor, normalize, prepare_face

    faces = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted((Path(__file__).parent / "data" / "faces").glob("*.png"))]
    assert faces
    for side in (48, 300):  # FER2013's size (enlarged) and a large camera crop (shrunk)
        batch = np.stack([cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA) for face in faces])
        evaluated = gray_batch_to_tensor(torch.from_numpy(batch), 224)
        for face, x in zip(batch, evaluated):
            edge = normalize(torch.from_numpy(prepare_face(face, 224)).permute(2, 0, 1).float() / 255.0)
            assert torch.equal(x, edge)


def test_step_profile_times_every_part_of_a_training_step(small_folder: Path, tmp_path: Path) -> None:
    from fer_bench.measure import training_step

    out = tmp_path / "steps.csv"
    assert training_step.main(["--data", str(small_folder / "train"), "--sizes", "32,48", "--steps", "2", "--warmup", "1",
                               "--batch-size", "8", "--threads", "1", "--out", str(out)]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["size"], row["part"]) for row in rows] == [(size, part) for size in ("32", "48") for part in training_step.PARTS]
    assert all(float(row["median_ms"]) > 0 for row in rows)
    for size in ("32", "48"):
        assert sum(float(row["share"]) for row in rows if row["size"] == size) == pytest.approx(1.0, abs=1e-3)


def test_eval_without_copies_matches_the_data_without_those_files(tmp_path: Path, capsys) -> None:
    stems = ["astronaut", "astronaut_flipped", "astronaut_darker", "astronaut_brighter", "astronaut_rotated_cw", "astronaut_rotated_ccw"]
    full = _class_folders(tmp_path / "val", {"happy": stems[:3], "sad": stems[3:]})
    unseen = _class_folders(tmp_path / "unseen", {"happy": stems[1:3], "sad": stems[3:5]})
    train = _class_folders(tmp_path / "train", {"angry": ["astronaut"], "fear": ["astronaut_rotated_ccw"]})  # its labels do not matter
    common = ["eval", "--threads", "1", "--json"]  # the shipped weights
    assert train_main([*common, "--data", str(full), "--without-copies-in", str(train)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert train_main([*common, "--data", str(unseen)]) == 0
    expected = json.loads(capsys.readouterr().out)
    left = report["without_copies"]
    assert report["count"] == 6 and left["copies_left_out"] == 2 and left["count"] == expected["count"] == 4
    assert left["confusion_matrix"] == expected["confusion_matrix"] and sum(map(sum, left["confusion_matrix"])) == 4
    for key in ("accuracy", "accuracy_interval_95", "macro_f1", "per_class_recall", "ece"):
        assert left[key] == pytest.approx(expected[key]) and left["flip_tta"][key] == pytest.approx(expected["flip_tta"][key])
    assert train_main([*common[:-1], "--data", str(full), "--without-copies-in", str(train)]) == 0
    assert "without the 2 faces that are copies of faces in" in capsys.readouterr().out
    assert train_main([*common, "--data", str(unseen), "--without-copies-in", str(unseen)]) == 2
    assert "none is left to evaluate" in capsys.readouterr().err
    assert train_main([*common, "--data", str(unseen), "--without-copies-in", str(tmp_path / "absent")]) == 2
    assert "no dataset folder" in capsys.readouterr().err
