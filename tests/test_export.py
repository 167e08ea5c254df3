"""Export: every partition as ONNX and TorchScript reproduces PyTorch; the Triton repository is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="export needs the export extra (onnx, onnxruntime)")

from shared_model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from shared_model.training.cli import main as train_main  # noqa: E402
from shared_model.network import FERNet  # noqa: E402


def test_export_cli_writes_checked_files_and_triton_repository(tmp_path: Path, capsys) -> None:
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    out = tmp_path / "exported"
    assert train_main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for part in ("cloud", "head", "tail", "whole"):
        assert (out / f"{part}.onnx").stat().st_size > 0 and (out / f"{part}.pt").stat().st_size > 0
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["fingerprint"] == load_checkpoint(weights).fingerprint
    assert len(manifest["files"]) == 8 and all(f["max_abs_error"] < 1e-4 for f in manifest["files"])
    config = (out / "triton" / "fer_attention" / "config.pbtxt").read_text()
    assert "dynamic_batching" in config and "dims: [ 8, 28, 28 ]" in config
    assert (out / "triton" / "fer_attention" / "1" / "model.onnx").read_bytes() == (out / "cloud.onnx").read_bytes()
    assert "max |difference| from PyTorch" in printed


def test_unknown_part_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert train_main(["export", "--parts", "torso", "--out", str(tmp_path)]) == 2
    assert "unknown parts or formats: torso" in capsys.readouterr().err
