"""Training logs read back, runs drawn end to end, and logs that are not logs refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_model.training.cli import main as train_main
from shared_model.training.fit import EpochRecord, chain_runs, read_log, write_log


def _epoch(epoch: int, size: int, val_accuracy: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch, size=size, lr=0.05, train_loss=1.25, train_accuracy=0.5, val_loss=1.0, val_accuracy=val_accuracy,
        val_macro_f1=0.4, trained_val_accuracy=val_accuracy - 0.01, seconds=90.5,
    )


FIRST = [_epoch(1, 112, 0.50), _epoch(2, 224, 0.60)]
SECOND = [_epoch(1, 112, 0.55), _epoch(2, 112, 0.58), _epoch(3, 224, 0.65)]


def test_a_written_log_reads_back_as_the_same_epochs(tmp_path: Path) -> None:
    write_log(tmp_path / "log.csv", FIRST)
    assert read_log(tmp_path / "log.csv") == FIRST


def test_runs_are_numbered_end_to_end_and_each_later_start_is_marked() -> None:
    history, starts = chain_runs([FIRST, SECOND])
    assert [r.epoch for r in history] == [1, 2, 3, 4, 5]
    assert [r.size for r in history] == [112, 224, 112, 112, 224]
    assert [r.val_accuracy for r in history] == [0.50, 0.60, 0.55, 0.58, 0.65]
    assert starts == [3]
    assert chain_runs([FIRST]) == (FIRST, [])
    assert [r.epoch for r in SECOND] == [1, 2, 3]  # the runs themselves are left as they were


def test_curves_command_draws_runs_and_names_the_best_epoch(tmp_path: Path, capsys) -> None:
    write_log(tmp_path / "first.csv", FIRST)
    write_log(tmp_path / "second.csv", SECOND)
    out = tmp_path / "plots" / "curves.png"
    assert train_main(["curves", str(tmp_path / "first.csv"), str(tmp_path / "second.csv"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "5 epochs in 2 runs" in printed and "0.6500 at epoch 5 (224x224)" in printed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no epochs"),
        ("epoch,size\n1,112\n", "not a training log: no column lr"),
        ("not,a,log\n1,2,3\n", "no column epoch"),
    ],
)
def test_a_file_that_is_no_training_log_is_refused_by_name(tmp_path: Path, capsys, content: str, message: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(content)
    assert train_main(["curves", str(path), "--out", str(tmp_path / "c.png")]) == 2
    error = capsys.readouterr().err
    assert message in error and str(path) in error
    assert not (tmp_path / "c.png").exists()


def test_a_bad_value_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    write_log(path, FIRST)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("224", "big", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"log\.csv line 3: .*big"):
        read_log(path)
    with pytest.raises(ValueError, match="cannot read the training log"):
        read_log(tmp_path / "missing.csv")
