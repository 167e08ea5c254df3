"""fer-train ablate: every row and seed trained on one schedule, summarized with its spread."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared_model.training.ablation import REFERENCE_ROW, ROWS, RunResult, summarize
from shared_model.training.cli import main as train_main


def test_a_difference_counts_only_beyond_the_spread_of_both_rows() -> None:
    rows = [row for row in ROWS if row.name in (REFERENCE_ROW, "backbone", "asp")]
    results = [
        RunResult(REFERENCE_ROW, 0, 0.60, 0.5, 1, 1.0), RunResult(REFERENCE_ROW, 1, 0.62, 0.5, 1, 1.0),
        RunResult("backbone", 0, 0.55, 0.5, 1, 1.0), RunResult("backbone", 1, 0.56, 0.5, 1, 1.0),  # 0.055 below
        RunResult("asp", 0, 0.58, 0.5, 1, 1.0), RunResult("asp", 1, 0.63, 0.5, 1, 1.0),  # within asp's own spread
    ]
    summary = {row.row: row for row in summarize(results, rows)}
    assert summary["backbone"].difference == pytest.approx(-0.055) and summary["backbone"].beyond_noise
    assert summary["asp"].spread == pytest.approx(0.05) and not summary["asp"].beyond_noise
    assert not summary[REFERENCE_ROW].beyond_noise and summary[REFERENCE_ROW].mean_accuracy == pytest.approx(0.61)


def test_beyond_noise_needs_two_seeds_in_both_rows_and_a_difference_above_each_spread() -> None:
    rows = [row for row in ROWS if row.name in (REFERENCE_ROW, "backbone")]
    noisy_reference = [RunResult(REFERENCE_ROW, 0, 0.58, 0.5, 1, 1.0), RunResult(REFERENCE_ROW, 1, 0.64, 0.5, 1, 1.0)]
    tight_row = [RunResult("backbone", 0, 0.565, 0.5, 1, 1.0), RunResult("backbone", 1, 0.575, 0.5, 1, 1.0)]
    # 0.04 below: beyond the row's own spread (0.01), within the reference's (0.06).
    assert not {r.row: r for r in summarize(noisy_reference + tight_row, rows)}["backbone"].beyond_noise
    # A reference with one seed shows no noise at all: nothing can be called beyond it.
    assert not {r.row: r for r in summarize(noisy_reference[:1] + tight_row, rows)}["backbone"].beyond_noise


def test_ablate_trains_each_row_with_each_seed_and_writes_both_tables(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("public_test", 3)):
        for code, name in enumerate(("dark", "light")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 48), 60 + 120 * code, np.uint8) + rng.integers(0, 20, (48, 48), dtype=np.uint8))
    results = tmp_path / "results"
    argv = ["ablate", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--results", str(results),
            "--row", REFERENCE_ROW, "--row", "backbone", "--seeds", "3,4", "--schedule", "64:1", "--batch-size", "4",
            "--max-steps-per-epoch", "1", "--calibration-fraction", "0"]
    assert train_main(argv) == 0
    runs = list(csv.DictReader((results / "ablation_runs.csv").open()))
    assert [(r["row"], r["seed"]) for r in runs] == [("backbone", "3"), ("backbone", "4"), (REFERENCE_ROW, "3"), (REFERENCE_ROW, "4")]
    rows = list(csv.DictReader((results / "ablation.csv").open()))
    assert [r["row"] for r in rows] == ["backbone", REFERENCE_ROW] and all(r["seeds"] == "2" for r in rows)
    plot = cv2.imread(str(results / "ablation.png"))
    assert plot is not None and plot.shape[1] > plot.shape[0] > 100  # a wide figure, one line per row
    assert (tmp_path / "runs" / "backbone" / "seed4" / "best.pt").is_file()
    # Trained in the order given (the reference first); the tables keep the rows' own order.
    finish = {row: (tmp_path / "runs" / row / "seed3" / "result.json").stat().st_mtime_ns for row in ("asp_sfp", "backbone")}
    assert finish["asp_sfp"] < finish["backbone"]
    assert "beyond noise" in capsys.readouterr().out
    finished = tmp_path / "runs" / "backbone" / "seed3"
    assert (finished / "result.json").is_file() and not (finished / "train_state.pt").exists()
    recorded = json.loads((finished / "result.json").read_text())["result"]["seconds"]
    assert recorded == pytest.approx(sum(float(r["seconds"]) for r in csv.DictReader((finished / "log.csv").open())))
    # Resumed: finished runs are read back from result.json, not trained again (their logs keep one epoch).
    capsys.readouterr()
    assert train_main(argv) == 0
    assert len(list(csv.DictReader((finished / "log.csv").open()))) == 1
    assert list(csv.DictReader((results / "ablation_runs.csv").open())) == runs
    # Other settings would make rows incomparable: refused, naming what differs, and nothing is retrained.
    assert train_main([*argv, "--lr", "0.05"]) == 2
    assert "lr differ" in capsys.readouterr().err
    assert len(list(csv.DictReader((finished / "log.csv").open()))) == 1
    # Another sitting trains another row (its name holds a comma): the tables keep the rows finished before.
    assert train_main([*argv[:7], "--row", "backbone, no adapter", *argv[11:]]) == 0
    later = list(csv.DictReader((results / "ablation_runs.csv").open()))
    new = [("backbone, no adapter", "3"), ("backbone, no adapter", "4")]
    assert [(r["row"], r["seed"]) for r in later] == [*new, *[(r["row"], r["seed"]) for r in runs]]
    # The tables hold the seeds asked for, so that every row is summarized over the same ones.
    assert train_main([*argv[:7], "--row", "backbone", "--seeds", "3", *argv[13:]]) == 0
    assert {r["seed"] for r in csv.DictReader((results / "ablation_runs.csv").open())} == {"3"}
    assert {r["row"] for r in csv.DictReader((results / "ablation.csv").open())} == {"backbone, no adapter", "backbone", REFERENCE_ROW}


def test_unknown_rows_are_named(tmp_path: Path, capsys) -> None:
    assert train_main(["ablate", "--data", str(tmp_path), "--row", "backbone", "--row", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
