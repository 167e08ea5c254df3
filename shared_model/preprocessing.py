"""Turning a face into network input, identically on the edge, the cloud and in training.

As in the paper: grayscale, resized to the input size, replicated to three
channels. Pixels travel as uint8 (H, W, 3); normalization happens on the side
that runs the network. NumPy and OpenCV only at import time (the torch-free edge
uses this module); the torch helpers import torch when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

__all__ = [
    "PIXEL_MEAN", "PIXEL_STD", "to_gray", "prepare_face", "ImageRejected", "IMAGE_FORMATS", "decode_face_image", "pixels_to_array", "pixels_to_tensor", "normalize",
    "gray_batch_to_tensor",
    "resize_gray",
]

if TYPE_CHECKING:
    from torch import Tensor

# Grayscale statistics of FER2013's training split (rounded); part of the model contract.
PIXEL_MEAN = 0.508
PIXEL_STD = 0.255


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale from a gray (H, W), gray (H, W, 1), BGR (H, W, 3) or BGRA (H, W, 4) image."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a gray or BGR(A) image, got shape {image.shape}")


def prepare_face(face: np.ndarray, size: int = 224) -> np.ndarray:
    """A face crop as the network's pixels: uint8 (size, size, 3), gray replicated."""
    if face.size == 0:
        raise ValueError("empty face crop")
    gray = to_gray(np.asarray(face))
    if gray.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {gray.dtype}")
    return np.repeat(resize_gray(gray, size)[:, :, None], 3, axis=2)


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size): area averaging to shrink, bilinear to enlarge."""
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class ImageRejected(ValueError):
    """An encoded face image refused before or while decoding; the message says why."""


IMAGE_FORMATS = ("JPEG", "PNG")  # what a face crop may be encoded as; Pillow's other decoders are never reached


def decode_face_image(data: bytes, size: int, max_bytes: int, max_pixels: int) -> np.ndarray:
    """An encoded face crop (JPEG or PNG) -> uint8 (size, size, 3), as the cloud strategy's server prepares it.

    The byte count and the pixel count (read from the header) are checked before
    decoding, so a decompression bomb is refused without being decoded. Whatever
    goes wrong while opening or decoding (Pillow raises OSError, ValueError,
    SyntaxError and more) is :class:`ImageRejected`, except running out of memory.
    """
    import io

    from PIL import Image, UnidentifiedImageError  # only servers that decode images load Pillow

    if len(data) > max_bytes:
        raise ImageRejected(f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
            gray = np.asarray(image.convert("L"))
    except (ImageRejected, MemoryError):
        raise
    except UnidentifiedImageError:
        raise ImageRejected(f"image could not be decoded: not a {' or '.join(IMAGE_FORMATS)} image (the formats accepted), or a corrupt one") from None
    except Exception as error:  # a corrupt image: any of Pillow's decoding errors
        raise ImageRejected(f"image could not be decoded: {type(error).__name__}: {str(error)[:200]}") from None
    return prepare_face(gray, size)


def pixels_to_array(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) or (H, W, 3) pixels -> normalized float32 (N, 3, H, W)."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected pixels shaped (N, H, W, 3), got {tuple(array.shape)}")
    scaled = array.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(normalize(scaled), dtype=np.float32)


def pixels_to_tensor(pixels: np.ndarray) -> "Tensor":
    """:func:`pixels_to_array` as a torch tensor."""
    import torch

    return torch.from_numpy(pixels_to_array(np.asarray(pixels)))


def normalize(x):  # type: ignore[no-untyped-def]
    """[0, 1] intensities -> network input (NumPy arrays or torch tensors)."""
    return (x - PIXEL_MEAN) / PIXEL_STD


def gray_batch_to_tensor(gray: "Tensor", size: int) -> "Tensor":
    """uint8 (N, H, W) grayscale faces -> normalized (N, 3, size, size).

    Each face is resized to uint8 pixels exactly as :func:`prepare_face` resizes
    it for the edge and the cloud, so that an evaluation measures what they
    answer: a resize in floating point differs from it by up to one grey
    level, which is enough to change the class of faces near a boundary.
    """
    import torch

    faces = gray.numpy() if isinstance(gray, torch.Tensor) else np.asarray(gray)
    resized = np.stack([resize_gray(face, size) for face in faces]) if len(faces) else np.empty((0, size, size), np.uint8)
    x = torch.from_numpy(resized).unsqueeze(1).float().div_(255.0)
    return normalize(x).expand(-1, 3, -1, -1)
