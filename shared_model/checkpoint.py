"""Checkpoints (config + weights + class names + provenance) and the model fingerprint.

The fingerprint is the model version on the wire: a SHA-256 over the canonical
config JSON and every tensor of the state dict (name, dtype, shape, bytes).
Edge and cloud must hold the same one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .config import ConfigError, ModelConfig
from .network import FERNet

__all__ = [
    "FORMAT_VERSION", "FINGERPRINT_CHARS", "DEFAULT_WEIGHTS_NAME", "CheckpointError", "fingerprint",
    "model_fingerprint", "Checkpoint", "save_checkpoint", "load_checkpoint", "default_weights_path",
    "select_device", "load_model",
]

FORMAT_VERSION = 1
FINGERPRINT_CHARS = 16
DEFAULT_WEIGHTS_NAME = "fer2013_default.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested model."""


def fingerprint(config: ModelConfig, state_dict: Mapping[str, Tensor]) -> str:
    """Short hex digest identifying an exact network (architecture and weights)."""
    digest = hashlib.sha256(config.to_json().encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def model_fingerprint(model: FERNet) -> str:
    return fingerprint(model.config, model.state_dict())


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.config, self.state_dict)

    def lineage(self) -> list[dict[str, Any]]:
        """The training runs that made these weights, oldest first (each run's ``parent`` is the one before)."""
        runs = []
        record = self.provenance
        while record:
            runs.append({k: v for k, v in record.items() if k != "parent"})
            record = record.get("parent") or {}
        return runs[::-1]

    def build_model(self, wavelet_backend: str = "ptwt") -> FERNet:
        """A model in eval mode holding these weights."""
        model = FERNet(self.config, wavelet_backend)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as error:
            raise CheckpointError(f"weights do not fit the config {self.config.name}: {error}") from None
        return model.eval()


def save_checkpoint(model: FERNet, path: str | Path, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (a crash mid-write never leaves a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "class_names": list(model.config.class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # Plain JSON values only, so that weights_only loading accepts the file.
        "provenance": json.loads(json.dumps(dict(provenance or {}), default=str)),
        "fingerprint": model_fingerprint(model),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, expected_config: ModelConfig | None = None) -> Checkpoint:
    """Read a checkpoint; with ``expected_config``, refuse one built for another network."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a fer-split checkpoint (format {FORMAT_VERSION})")
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    if expected_config is not None and config != expected_config:
        raise CheckpointError(
            f"{path} was trained for a different network: " + "; ".join(config.differences(expected_config))
        )
    checkpoint = Checkpoint(config, payload["state_dict"], payload.get("provenance", {}))
    stored = payload.get("fingerprint")
    if stored and stored != checkpoint.fingerprint:
        raise CheckpointError(f"{path} is corrupt: its fingerprint {stored} does not match its weights")
    return checkpoint


def default_weights_path() -> Path:
    """The trained default-config weights shipped inside the package."""
    return Path(str(resources.files("shared_model") / "weights" / DEFAULT_WEIGHTS_NAME))


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return device


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu", wavelet_backend: str = "ptwt") -> tuple[FERNet, Checkpoint]:
    """Model (eval mode, on ``device``) and its checkpoint; ``None`` means the shipped weights."""
    checkpoint = load_checkpoint(path or default_weights_path())
    return checkpoint.build_model(wavelet_backend).to(device), checkpoint
