"""Export: every partition as ONNX and TorchScript reproduces PyTorch; the Triton repository is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="export needs the export extra (onnx, onnxruntime)")

from shared_model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from shared_model.training.cli import main as train_main  # noqa: E402
from shared_model.network import FERNet  # noqa: E402

TRITON_MODEL = Path(__file__).resolve().parents[1] / "deploy" / "triton" / "model.py"


def test_export_cli_writes_checked_files_and_triton_repository(tmp_path: Path, capsys) -> None:
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    out = tmp_path / "exported"
    assert train_main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for part in ("cloud", "head", "tail", "whole"):
        assert (out / f"{part}.onnx").stat().st_size > 0 and (out / f"{part}.pt").stat().st_size > 0
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["fingerprint"] == load_checkpoint(weights).fingerprint
    assert len(manifest["files"]) == 9 and all(f["max_abs_error"] < 1e-4 for f in manifest["files"])
    assert {"part": "attention", "format": "npz", "file": "attention.npz"}.items() <= next(f for f in manifest["files"] if f["part"] == "attention").items()
    assert (out / "attention.npz").stat().st_size > 0  # fer-cloud's torch-free fer_attention
    for name in ("fer_attention", "fer_rest", "fer_classifier"):  # the Python backend, ONNX Runtime inside (tests/test_triton_engine.py runs it)
        config = (out / "triton" / name / "config.pbtxt").read_text()
        assert ("dynamic_batching" in config) == (name != "fer_classifier") and f'string_value: "{manifest["fingerprint"]}"' in config
        assert (out / "triton" / name / "1" / "model.py").read_text() == TRITON_MODEL.read_text()  # the model deploy/triton holds
        assert (out / "triton" / name / "1" / "model.onnx").stat().st_size > 0
    assert "dims: [ 8, 28, 28 ]" in (out / "triton" / "fer_attention" / "config.pbtxt").read_text()
    assert "max |difference| from PyTorch" in printed


def test_the_onnxruntime_backend_variant_takes_fp32_and_refuses_uint8(tmp_path: Path, capsys) -> None:
    weights = save_checkpoint(FERNet(), tmp_path / "w.pt")
    common = ["export", "--weights", str(weights), "--out", str(tmp_path / "ort"), "--parts", "cloud", "--formats", "onnx", "--triton-backend", "onnxruntime"]
    assert train_main(common) == 2 and "FP32 features only" in capsys.readouterr().err
    assert train_main([*common, "--triton-features", "fp32"]) == 0
    config = (tmp_path / "ort" / "triton" / "fer_rest" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "TYPE_FP32" in config
    assert not (tmp_path / "ort" / "triton" / "fer_rest" / "1" / "model.py").exists()
    assert "TYPE_UINT8" in (tmp_path / "ort" / "triton" / "fer_classifier" / "config.pbtxt").read_text()  # raw pixels


def test_unknown_part_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert train_main(["export", "--parts", "torso", "--out", str(tmp_path)]) == 2
    assert "unknown parts or formats: torso" in capsys.readouterr().err


def test_a_calibrated_model_exports_its_temperature_into_every_scoring_part(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime
    import torch

    torch.manual_seed(0)
    model = FERNet().eval()
    model.calibrate(1.6)
    weights = save_checkpoint(model, tmp_path / "calibrated.pt")
    out = tmp_path / "exported"
    assert train_main(["export", "--weights", str(weights), "--out", str(out), "--parts", "tail,whole", "--formats", "onnx", "--no-triton"]) == 0
    assert json.loads((out / "model.json").read_text())["config"]["temperature"] == 1.6
    image = torch.randn(1, 3, 224, 224)
    session = onnxruntime.InferenceSession(str(out / "whole.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    model.calibrate(1.0)
    uncalibrated = model(image).detach().numpy()
    np.testing.assert_allclose(exported, uncalibrated / 1.6, atol=1e-4)
