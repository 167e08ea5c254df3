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

    from edge_client.samples import sample_image
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
    from shared_model.training.datasets import load_image_folder
    from shared_model.preprocessing import prepare_face

    data = load_image_folder(FER2013 / "public_test", limit_per_class=2, progress=False)
    return [prepare_face(img.numpy(), trained_model.config.input_size) for img in data.images]


TEST_FACES = Path(__file__).parent / "data" / "faces"


@pytest.fixture(scope="session")
def bundled_faces(trained_model):
    """The redistributable faces under tests/data/faces (the sample photo's face and images made from it) as network pixels."""
    import cv2

    from shared_model.preprocessing import prepare_face

    paths = sorted(TEST_FACES.glob("*.png"))
    assert paths, f"no faces under {TEST_FACES}"
    return [prepare_face(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), trained_model.config.input_size) for path in paths]


@pytest.fixture(scope="session")
def parity_faces(bundled_faces, request):
    """Faces for parity tests: always the bundled ones, plus FER2013 faces when ../shared/data holds them."""
    if not (FER2013 / "public_test").is_dir():
        return list(bundled_faces)
    return [*bundled_faces, *request.getfixturevalue("fer_faces")]


@pytest.fixture
def server(trained_model):
    from fer_bench.loopback import start_server

    running = start_server(trained_model)
    yield running
    running.stop_now()


@pytest.fixture(scope="module")
def inline_server(trained_model):
    """The CPU default: fer_attention computed in batches on the event loop, each request answered in its batch's turn."""
    from fer_bench.loopback import start_server

    from cloud_server.batching import LoopBatcher

    running = start_server(trained_model, runtime="onnx")
    assert isinstance(running.engine.batchers["fer_attention"], LoopBatcher)
    yield running
    running.stop_now()
