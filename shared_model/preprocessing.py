"""Turning a face into network input, identically on the edge, the cloud and in training.

As in the paper: grayscale, resized to the input size, replicated to three
channels. Pixels travel as uint8 (H, W, 3); normalization happens on the side
that runs the network.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
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
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    resized = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.repeat(resized[:, :, None], 3, axis=2)


def pixels_to_tensor(pixels: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, H, W, 3) or (H, W, 3) pixels -> normalized float (N, 3, H, W)."""
    tensor = pixels if isinstance(pixels, Tensor) else torch.from_numpy(np.array(pixels, copy=True))
    if tensor.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {tensor.dtype}")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected pixels shaped (N, H, W, 3), got {tuple(tensor.shape)}")
    return normalize(tensor.permute(0, 3, 1, 2).float().div_(255.0))


def normalize(x: Tensor) -> Tensor:
    """[0, 1] intensities -> network input."""
    return (x - PIXEL_MEAN) / PIXEL_STD


def gray_batch_to_tensor(gray: Tensor, size: int) -> Tensor:
    """uint8 (N, H, W) grayscale faces -> normalized (N, 3, size, size), bilinear resize."""
    x = gray.unsqueeze(1).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x).expand(-1, 3, -1, -1)
