"""What the edge puts on the wire and asks back: one set of options for every remote strategy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared_model import codec
from shared_model.offload import DEFAULT_IMAGE_SIZE, DEFAULT_JPEG_QUALITY, FACE_IMAGE_FORMATS, SPLIT_RETURNS, encode_face_image
from shared_model.protocol import CHANNEL_ATTENTION, SPATIAL_ATTENTION

from .strategies import SPLIT, check_choice

__all__ = ["WireOptions"]


@dataclass(frozen=True)
class WireOptions:
    """The wire options of an edge runner.

    ``encoding``: the split tensor's (``uint8``, ``fp16``, ``fp32``); ``image_format``:
    what the cloud strategy sends (JPEG, PNG, or the raw prepared pixels);
    ``image_size``: the largest side of the face it sends (``None``: as found);
    ``jpeg_quality``: of that face; ``split_returns``: what a split call gets back,
    the attention alone or the attended map.
    """

    encoding: str = codec.UINT8
    image_format: str = "jpeg"
    image_size: int | None = DEFAULT_IMAGE_SIZE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    split_returns: str = "attention"

    def __post_init__(self) -> None:
        check_choice("image format", self.image_format, FACE_IMAGE_FORMATS)
        check_choice("split return", self.split_returns, SPLIT_RETURNS)

    def requested_outputs(self, strategy: str) -> tuple[str, ...]:
        """The outputs a request of ``strategy`` names (none: the model's default output)."""
        return (SPATIAL_ATTENTION, CHANNEL_ATTENTION) if strategy == SPLIT and self.split_returns == "attention" else ()

    def encode_image(self, pixels: np.ndarray, crop: np.ndarray | None = None) -> bytes | np.ndarray:
        """What the cloud strategy sends (see :func:`shared_model.offload.encode_face_image`)."""
        return encode_face_image(pixels, self.image_format, self.image_size, self.jpeg_quality, crop)
