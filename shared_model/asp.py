"""ASP: Arbitrary-oriented Spatial Pooling (spatial attention).

Wu et al., "Edge-AI-Driven Framework with Efficient Mobile Network Design for
Facial Expression Recognition", ACM TECS 22(3), 2023, Section 3.2.

Each channel is average-pooled along four line families: rows (H values),
columns (W values), forward diagonals ``i + j = k`` and backward diagonals
``i - j = k`` (H + W - 1 values each). Rows and columns are concatenated and
mapped by one 1x1 convolution to one channel; the two diagonal families share a
second 1x1 convolution. After a sigmoid, every pooled value is broadcast back to
the pixels of its line; the element-wise product of the selected direction maps
is the spatial attention that multiplies the input.

Vectorized: all selected line means come from one matrix product with an
(H*W, lines) averaging matrix, and the broadcast back is one gather; both are
non-persistent buffers of the module for the configured map size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import (
    ASP_DIRECTIONS,
    BACKWARD_DIAGONAL,
    FORWARD_DIAGONAL,
    HORIZONTAL,
    VERTICAL,
    ModelConfig,
)

AXIS_DIRECTIONS = (HORIZONTAL, VERTICAL)
DIAGONAL_DIRECTIONS = (FORWARD_DIAGONAL, BACKWARD_DIAGONAL)
DEFAULT_MAP_SIZE: tuple[int, int] = ModelConfig().split_shape[1:]


def line_index(direction: str, height: int, width: int) -> tuple[Tensor, int]:
    """Line number of every pixel (flattened row-major) and the number of lines.

    Horizontal lines are rows ``i``, vertical lines are columns ``j``, forward
    diagonals ``i + j`` and backward diagonals ``i - j + (W - 1)``, so every line
    number lies in ``0 .. num_lines - 1``.
    """
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    cols = torch.arange(width).view(1, -1).expand(height, width)
    lines = {
        HORIZONTAL: (rows, height),
        VERTICAL: (cols, width),
        FORWARD_DIAGONAL: (rows + cols, height + width - 1),
        BACKWARD_DIAGONAL: (rows - cols + width - 1, height + width - 1),
    }
    if direction not in lines:
        raise ValueError(f"unknown direction {direction!r}; expected one of {ASP_DIRECTIONS}")
    index, count = lines[direction]
    return index.reshape(-1), count


def line_mean_matrix(direction: str, height: int, width: int) -> Tensor:
    """Matrix ``M`` of shape (H*W, lines) such that ``x.flatten(-2) @ M`` are the line means."""
    index, num_lines = line_index(direction, height, width)
    one_hot = torch.nn.functional.one_hot(index, num_lines).double()
    return one_hot / one_hot.sum(dim=0, keepdim=True)


def directional_means(x: Tensor, direction: str) -> Tensor:
    """Average of a (N, C, H, W) map along one line family -> (N, C, lines)."""
    matrix = line_mean_matrix(direction, *x.shape[-2:]).to(device=x.device, dtype=x.dtype)
    return x.flatten(2) @ matrix


@dataclass(frozen=True)
class LinePlan:
    """Everything ASP needs for one map size."""

    mean_matrix: Tensor  # (H*W, total lines): all selected directions' means, concatenated
    broadcast_index: Tensor  # (directions, H*W): for each pixel, its line's slot in the concatenation
    axis_lines: int  # rows + columns among the concatenated lines (they come first)


def line_plan(directions: Sequence[str], height: int, width: int) -> LinePlan:
    """The averaging matrix and broadcast index of ``directions`` (in that order) on an H x W map."""
    matrices, indices, offset = [], [], 0
    for direction in directions:
        index, count = line_index(direction, height, width)
        matrices.append(line_mean_matrix(direction, height, width))
        indices.append(index + offset)
        offset += count
    axis_lines = sum(m.shape[1] for d, m in zip(directions, matrices) if d in AXIS_DIRECTIONS)
    return LinePlan(torch.cat(matrices, dim=1), torch.stack(indices), axis_lines)


class ArbitraryOrientedSpatialPooling(nn.Module):
    """ASP spatial attention over any non-empty subset of the four directions.

    The line plan for ``map_size`` is kept as non-persistent buffers (they follow
    the module's device and dtype and stay out of the state dict); other map
    sizes are planned on the fly.

    Args:
        channels: channels of the input map.
        directions: which line families to use (the paper's Table 3 ablation).
        map_size: (H, W) the plan is precomputed for; the split map is 28x28.
    """

    def __init__(self, channels: int, directions: Sequence[str] = ASP_DIRECTIONS, map_size: tuple[int, int] = DEFAULT_MAP_SIZE) -> None:
        super().__init__()
        directions = tuple(directions)
        if not directions or not set(directions) <= set(ASP_DIRECTIONS) or len(set(directions)) != len(directions):
            raise ValueError(f"directions must be a non-empty subset of {ASP_DIRECTIONS}, got {directions}")
        # Axis directions first, then diagonals: the order the two convs consume them.
        self.directions = tuple(d for d in AXIS_DIRECTIONS + DIAGONAL_DIRECTIONS if d in directions)
        uses = set(self.directions)
        self.axis_conv = nn.Conv2d(channels, 1, kernel_size=1) if uses & set(AXIS_DIRECTIONS) else None
        self.diagonal_conv = nn.Conv2d(channels, 1, kernel_size=1) if uses & set(DIAGONAL_DIRECTIONS) else None
        self.map_size = (int(map_size[0]), int(map_size[1]))
        plan = line_plan(self.directions, *self.map_size)
        self.axis_lines = plan.axis_lines
        self.register_buffer("mean_matrix", plan.mean_matrix.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("broadcast_index", plan.broadcast_index, persistent=False)

    def plan(self, height: int, width: int) -> LinePlan:
        """The line plan for an H x W map on this module's device (the buffers for ``map_size``)."""
        if (height, width) == self.map_size:
            return LinePlan(self.mean_matrix, self.broadcast_index, self.axis_lines)
        plan = line_plan(self.directions, height, width)
        return LinePlan(plan.mean_matrix.to(self.mean_matrix), plan.broadcast_index.to(self.broadcast_index.device), plan.axis_lines)

    def attention(self, x: Tensor) -> Tensor:
        """The spatial attention map, shape (N, 1, H, W), values in (0, 1)."""
        batch, height, width = x.shape[0], int(x.shape[2]), int(x.shape[3])  # int(): constant under export tracing
        plan = self.plan(height, width)
        pooled = (x.flatten(2) @ plan.mean_matrix.to(x.dtype)).unsqueeze(-1)  # (N, C, lines, 1)
        logits = []
        if self.axis_conv is not None:
            logits.append(self.axis_conv(pooled[:, :, : plan.axis_lines]))
        if self.diagonal_conv is not None:
            logits.append(self.diagonal_conv(pooled[:, :, plan.axis_lines :]))
        line_weights = torch.sigmoid(torch.cat(logits, dim=2)).view(batch, -1)  # (N, lines)
        per_direction = line_weights[:, plan.broadcast_index]  # (N, directions, H*W)
        return per_direction.prod(dim=1).view(batch, 1, height, width)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"directions={self.directions}, map_size={self.map_size}"


__all__ = ["ArbitraryOrientedSpatialPooling", "LinePlan", "line_plan", "line_index", "line_mean_matrix", "directional_means"]
