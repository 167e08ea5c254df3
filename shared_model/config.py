"""The one frozen description of the network that the edge and the cloud share.

Wu et al., "Edge-AI-Driven Framework with Efficient Mobile Network Design for
Facial Expression Recognition", ACM TECS 22(3), 2023: a ShuffleNetV2 1.0x
backbone with two attention modules after Stage 2, ASP (spatial) and SFP
(channel), split between an edge device and a cloud service.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

ASP = "asp"
SFP = "sfp"
ATTENTION_MODULES = (ASP, SFP)

HORIZONTAL = "horizontal"
VERTICAL = "vertical"
FORWARD_DIAGONAL = "forward_diagonal"
BACKWARD_DIAGONAL = "backward_diagonal"
ASP_DIRECTIONS = (HORIZONTAL, VERTICAL, FORWARD_DIAGONAL, BACKWARD_DIAGONAL)

WAVELET_FAMILIES = ("haar", "db", "sym")
# How the DWT extends a map past its borders (PyWavelets' names). ``zero`` is the
# default and what the shipped weights use; it is left out of the serialized
# config so that configs made before the field existed keep their fingerprint.
SFP_BOUNDARY_MODES = ("zero", "symmetric", "reflect", "periodization")
DEFAULT_SFP_BOUNDARY = "zero"
# Configs without a temperature leave it out of their JSON, so their fingerprints stay as they were.
DEFAULT_TEMPERATURE = 1.0
MAX_SFP_LEVEL = 4
STAGE2_CHANNELS = 116
INPUT_SIZE = 224
STAGE2_STRIDE = 8  # conv1 (2) * maxpool (2) * stage2 (2)


class ConfigError(ValueError):
    """A model configuration that does not describe a valid network."""


@dataclass(frozen=True)
class ModelConfig:
    """Network description; equality of two configs means the same architecture.

    Attributes:
        attention: attention modules after Stage 2, in execution order; any of
            ``()``, ``("asp",)``, ``("sfp",)``, ``("asp", "sfp")``, ``("sfp", "asp")``.
        asp_directions: non-empty subset of the four ASP line families.
        sfp_wavelet: PyWavelets name: ``haar``, ``dbN`` or ``symN``.
        sfp_levels: DWT level used by each SFP channel group; its length is the
            number of groups, each level in 1..4 (default: groups at levels 1, 2, 3).
        sfp_boundary: the DWT's boundary mode, one of ``SFP_BOUNDARY_MODES``
            (``periodization`` needs the pytorch_wavelets backend). With
            ``zero`` the LL-band mean is a constant times the plain global
            average (see docs/sfp_boundary.md).
        adapter_width: channels on the wire; 116 (Stage 2's width) means no adapter.
        class_names: output classes, in output order.
        input_size: side of the square input image.
        temperature: the class scores are divided by it before the softmax, so
            that a top probability matches how often the top class is right
            (fitted by ``fer-train calibrate``; 1.0 means uncalibrated). It
            changes no prediction, only the probabilities.
    """

    attention: tuple[str, ...] = (ASP, SFP)
    asp_directions: tuple[str, ...] = ASP_DIRECTIONS
    sfp_wavelet: str = "db2"
    sfp_levels: tuple[int, ...] = (1, 2, 3)
    sfp_boundary: str = DEFAULT_SFP_BOUNDARY
    adapter_width: int = 8
    class_names: tuple[str, ...] = FER2013_CLASSES
    input_size: int = INPUT_SIZE
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        for name in ("attention", "asp_directions", "sfp_levels", "class_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def uses_adapter(self) -> bool:
        return self.adapter_width != STAGE2_CHANNELS

    @property
    def split_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of the tensor that crosses the network for one image."""
        side = self.input_size // STAGE2_STRIDE
        return (self.adapter_width, side, side)

    @property
    def name(self) -> str:
        """Short label such as ``backbone+asp+sfp``."""
        return "+".join(("backbone",) + self.attention)

    def _validate(self) -> None:
        if len(set(self.attention)) != len(self.attention) or not set(self.attention) <= set(ATTENTION_MODULES):
            raise ConfigError(f"attention must be distinct modules from {ATTENTION_MODULES}, got {self.attention}")
        if not self.asp_directions or not set(self.asp_directions) <= set(ASP_DIRECTIONS):
            raise ConfigError(f"asp_directions must be a non-empty subset of {ASP_DIRECTIONS}, got {self.asp_directions}")
        if len(set(self.asp_directions)) != len(self.asp_directions):
            raise ConfigError(f"asp_directions repeats a direction: {self.asp_directions}")
        if self.sfp_wavelet.rstrip("0123456789") not in WAVELET_FAMILIES:
            raise ConfigError(f"sfp_wavelet must be haar, dbN or symN, got {self.sfp_wavelet!r}")
        if not self.sfp_levels or any(not 1 <= level <= MAX_SFP_LEVEL for level in self.sfp_levels):
            raise ConfigError(f"sfp_levels must be 1..{MAX_SFP_LEVEL} for each group, got {self.sfp_levels}")
        if self.sfp_boundary not in SFP_BOUNDARY_MODES:
            raise ConfigError(f"sfp_boundary must be one of {SFP_BOUNDARY_MODES}, got {self.sfp_boundary!r}")
        if SFP in self.attention and len(self.sfp_levels) > self.adapter_width:
            raise ConfigError(f"{len(self.sfp_levels)} SFP groups need at least as many channels, adapter_width={self.adapter_width}")
        if not 1 <= self.adapter_width <= STAGE2_CHANNELS:
            raise ConfigError(f"adapter_width must be 1..{STAGE2_CHANNELS}, got {self.adapter_width}")
        if len(self.class_names) < 2:
            raise ConfigError("at least two class names are needed")
        if not (isinstance(self.temperature, (int, float)) and 0.0 < self.temperature < float("inf")):
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.input_size < 32 or self.input_size % STAGE2_STRIDE:
            raise ConfigError(f"input_size must be a multiple of {STAGE2_STRIDE} and at least 32, got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; ``sfp_boundary`` and ``temperature`` only when not at their defaults.

        Leaving a default out keeps the canonical JSON, and so the fingerprint,
        of every config made before the field existed.
        """
        data = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}
        if data["sfp_boundary"] == DEFAULT_SFP_BOUNDARY:
            del data["sfp_boundary"]
        if data["temperature"] == DEFAULT_TEMPERATURE:
            del data["temperature"]
        else:
            data["temperature"] = float(data["temperature"])
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the form that is hashed."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def differences(self, other: "ModelConfig") -> list[str]:
        """Human-readable list of fields that differ, e.g. ``adapter_width: 8 != 116``."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def config_for(name: str, **overrides: Any) -> ModelConfig:
    """Config from a label such as ``backbone``, ``backbone+asp``, ``backbone+sfp+asp``."""
    parts = name.split("+")
    if parts[0] != "backbone":
        raise ConfigError(f"configuration names start with 'backbone', got {name!r}")
    return ModelConfig(attention=tuple(parts[1:]), **overrides)


STANDARD_CONFIGS: tuple[str, ...] = (
    "backbone",
    "backbone+asp",
    "backbone+sfp",
    "backbone+asp+sfp",
    "backbone+sfp+asp",
)

__all__ = [
    "ModelConfig",
    "ConfigError",
    "config_for",
    "FER2013_CLASSES",
    "STANDARD_CONFIGS",
    "ASP",
    "SFP",
    "ATTENTION_MODULES",
    "HORIZONTAL",
    "VERTICAL",
    "FORWARD_DIAGONAL",
    "BACKWARD_DIAGONAL",
    "ASP_DIRECTIONS",
    "WAVELET_FAMILIES",
    "SFP_BOUNDARY_MODES",
    "DEFAULT_SFP_BOUNDARY",
    "DEFAULT_TEMPERATURE",
    "MAX_SFP_LEVEL",
    "STAGE2_CHANNELS",
    "STAGE2_STRIDE",
    "INPUT_SIZE",
]
