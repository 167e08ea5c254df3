"""Checkpoints: identical outputs after a round trip, config mismatch named, fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared_model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from shared_model.config import ModelConfig
from shared_model.network import FERNet


def test_saved_and_loaded_model_gives_identical_outputs(tmp_path: Path) -> None:
    model = FERNet().eval()
    path = save_checkpoint(model, tmp_path / "m.pt", {"data": "test", "validation_accuracy": 0.5})
    checkpoint = load_checkpoint(path)
    restored = checkpoint.build_model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    assert checkpoint.fingerprint == model_fingerprint(model)
    assert checkpoint.provenance["validation_accuracy"] == 0.5
    assert checkpoint.class_names == model.config.class_names


def test_loading_into_a_different_config_names_the_difference(tmp_path: Path) -> None:
    path = save_checkpoint(FERNet(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"adapter_width: 8 != 16"):
        load_checkpoint(path, expected_config=ModelConfig(adapter_width=16))


def test_fingerprint_changes_with_weights_and_config() -> None:
    model = FERNet()
    before = model_fingerprint(model)
    with torch.no_grad():
        model.tail.fc.bias[0] += 1e-6
    assert model_fingerprint(model) != before
    other = FERNet(ModelConfig(sfp_wavelet="haar"))
    other.load_state_dict(model.state_dict())
    assert model_fingerprint(other) != model_fingerprint(model)


def test_corrupt_and_tampered_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    path = save_checkpoint(FERNet(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["tail.fc.bias"] += 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
