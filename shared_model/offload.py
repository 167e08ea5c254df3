"""What the edge sends when it offloads a face, and what it makes of the answer.

- The ``cloud`` strategy sends the face itself: the gray crop as found, shrunk
  to a small side and encoded as JPEG or PNG (the cloud resizes it to the
  input size), or the prepared raw pixels as in the paper.
- The ``split`` strategy gets back either the attended map (the paper's round
  trip) or only the attention, a spatial map ``S`` and channel weights ``c``:
  whatever the order of the attention modules the attended map is
  ``z * S * c``, so the edge applies them to its own full-precision ``z``.

NumPy and OpenCV only: the torch-free edge uses this module.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared_model.preprocessing import to_gray

__all__ = [
    "FACE_IMAGE_FORMATS", "DEFAULT_IMAGE_SIZE", "DEFAULT_JPEG_QUALITY", "SPLIT_RETURNS", "encode_face_image", "apply_attention",
]

FACE_IMAGE_FORMATS = ("jpeg", "png", "raw")  # raw: the prepared (S, S, 3) pixels, unencoded
# The largest side of the face the cloud strategy sends: FER2013's faces, the network's training data,
# are 48x48, so a crop shrunk to that side keeps what the network learned from
# (`fer-bench offload-accuracy` measures the accuracy of each side).
DEFAULT_IMAGE_SIZE = 48
DEFAULT_JPEG_QUALITY = 95
SPLIT_RETURNS = ("attention", "features")  # what a split call gets back: the attention alone, or the attended map


def encode_face_image(
    pixels: np.ndarray,
    image_format: str = "jpeg",
    size: int | None = DEFAULT_IMAGE_SIZE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    crop: np.ndarray | None = None,
) -> bytes | np.ndarray:
    """What the cloud strategy sends: the raw prepared (S, S, 3) pixels as in the paper, or the gray
    face as JPEG/PNG: the ``crop`` as found (else the prepared pixels), shrunk to ``size`` if larger."""
    if image_format == "raw":
        return pixels
    gray = to_gray(crop) if crop is not None else pixels[:, :, 0]
    if size and max(gray.shape[:2]) > size:
        gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    if image_format == "png":
        ok, buffer = cv2.imencode(".png", gray)
    else:
        ok, buffer = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError(f"could not encode the face as {image_format}")
    return buffer.tobytes()


def apply_attention(z: np.ndarray, spatial: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """The attended tensor ``z * S * c`` from the edge's own ``z`` and the attention it received."""
    return z * spatial * channel[:, :, None, None]
