"""Shared fixtures: paths to the real data in ../shared/data (tests skip without it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FER2013 = SHARED_DATA / "fer2013"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fer2013_root() -> Path:
    if not (FER2013 / "train").is_dir():
        pytest.skip(f"FER2013 is not at {FER2013} (see ../shared/data/README.md)")
    return FER2013


@pytest.fixture(scope="session")
def trained_model():
    """The shipped default weights (a real, confident classifier)."""
    from shared_model.checkpoint import load_model

    model, _ = load_model()
    return model


@pytest.fixture(scope="session")
def sample_face(trained_model):
    """The bundled sample photo's face, prepared as network pixels (224, 224, 3)."""
    import cv2

    from edge_client.cli import sample_image
    from edge_client.faces import FaceDetector
    from shared_model.preprocessing import prepare_face

    image = cv2.imread(str(sample_image()))
    box = FaceDetector().detect(image)[0]
    return prepare_face(FaceDetector.crop(image, box), trained_model.config.input_size)


@pytest.fixture(scope="session")
def fer_faces(trained_model):
    """A few real FER2013 validation faces as network pixels (skips without the data)."""
    if not (FER2013 / "public_test").is_dir():
        pytest.skip(f"FER2013 is not at {FER2013}")
    from shared_model.datasets import load_image_folder
    from shared_model.preprocessing import prepare_face

    data = load_image_folder(FER2013 / "public_test", limit_per_class=2, progress=False)
    return [prepare_face(img.numpy(), trained_model.config.input_size) for img in data.images]


@pytest.fixture
def server(trained_model):
    from servers import start_server

    running = start_server(trained_model)
    yield running
    running.stop_now()
