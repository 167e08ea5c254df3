"""Batched augmentation of uint8 grayscale faces, as the strongest FER2013 recipes do it.

Every transform works on a whole batch at once (no per-image Python loop): one
random affine warp per face (crop-like zoom, rotation, translation, mirror),
done by ``grid_sample``, which also resizes to the training size; brightness
and contrast jitter; then random erasing of one rectangle per face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..preprocessing import normalize

__all__ = ["Augmentation", "augment"]


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms (each drawn uniformly per face).

    Attributes:
        zoom: fraction of the face seen (a random crop; 1.0 is the whole face).
        rotation_degrees: largest rotation either way.
        translation: largest shift either way, as a fraction of the side.
        contrast: contrast factor range around the face's mean.
        brightness: largest additive brightness change (in [0, 1] pixel units).
        erase_probability: chance that a face gets one rectangle replaced by noise.
        erase_area: range of the erased rectangle's area, as a fraction of the face.
    """

    zoom: tuple[float, float] = (0.8, 1.0)
    rotation_degrees: float = 15.0
    translation: float = 0.1
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 0.15
    erase_probability: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(batch, generator=generator) * (high - low) + low


def _warp(x: Tensor, size: int, settings: Augmentation, generator: torch.Generator) -> Tensor:
    """Zoom, rotate, shift and mirror each face of (B, 1, H, W), sampled to (B, 1, size, size)."""
    batch = x.shape[0]
    zoom = _uniform(batch, *settings.zoom, generator)
    angle = _uniform(batch, -settings.rotation_degrees, settings.rotation_degrees, generator) * math.pi / 180
    mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    # affine_grid's coordinates span [-1, 1]: a shift of t of the side is 2t there.
    shift_x, shift_y = (_uniform(batch, -2 * settings.translation, 2 * settings.translation, generator) for _ in range(2))
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin, shift_x], dim=1), torch.stack([sin * mirror, cos, shift_y], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: Tensor, settings: Augmentation, generator: torch.Generator) -> Tensor:
    batch = x.shape[0]
    contrast = _uniform(batch, *settings.contrast, generator).view(-1, 1, 1, 1)
    brightness = _uniform(batch, -settings.brightness, settings.brightness, generator).view(-1, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp_(0, 1)


def _erase(x: Tensor, settings: Augmentation, generator: torch.Generator) -> Tensor:
    """Replace one random rectangle per chosen face with uniform noise (random erasing)."""
    batch, _, height, width = x.shape
    area = _uniform(batch, *settings.erase_area, generator)
    aspect = torch.exp(_uniform(batch, math.log(0.3), math.log(1 / 0.3), generator))
    box_h = (torch.sqrt(area * aspect) * height).clamp(1, height)
    box_w = (torch.sqrt(area / aspect) * width).clamp(1, width)
    top = torch.rand(batch, generator=generator) * (height - box_h)
    left = torch.rand(batch, generator=generator) * (width - box_w)
    chosen = torch.rand(batch, generator=generator) < settings.erase_probability
    rows = torch.arange(height).view(1, -1, 1)
    cols = torch.arange(width).view(1, 1, -1)
    inside = (
        (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
        & chosen.view(-1, 1, 1)
    ).unsqueeze(1)
    noise = torch.rand(x.shape, generator=generator)
    return torch.where(inside, noise, x)


def augment(gray: Tensor, size: int, generator: torch.Generator, settings: Augmentation = Augmentation()) -> Tensor:
    """Random warp, jitter and erasing: uint8 (B, H, W) -> normalized (B, 3, size, size)."""
    x = gray.unsqueeze(1).float().div_(255.0)
    x = _jitter(_warp(x, size, settings, generator), settings, generator)
    if settings.erase_probability > 0:
        x = _erase(x, settings, generator)
    return normalize(x).expand(-1, 3, -1, -1)
