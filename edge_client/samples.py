"""The sample photo that ships with the package (for the demo, benchmarks and tests)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["sample_image"]


def sample_image() -> Path:
    """The bundled public-domain sample photo (astronaut Eileen Collins, NASA)."""
    return Path(str(resources.files("edge_client") / "assets" / "astronaut.png"))
