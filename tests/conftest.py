"""Shared fixtures: paths to the real data in ../shared/data (tests skip without it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FER2013 = SHARED_DATA / "fer2013"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fer2013_root() -> Path:
    if not (FER2013 / "train").is_dir():
        pytest.skip(f"FER2013 is not at {FER2013} (see ../shared/data/README.md)")
    return FER2013
