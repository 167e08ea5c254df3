"""An exponential moving average of a model's weights, the weights that are evaluated and shipped.

Polyak averaging as modern recipes use it: after every optimizer step,
``average = decay * average + (1 - decay) * weights`` for every floating-point
tensor of the state dict (BatchNorm's running statistics included); integer
buffers are copied. The decay ramps up as ``(1 + n) / (10 + n)`` over the
first updates ``n`` so that an early average is not dominated by the
initialization.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """Holds ``module``, a frozen copy of the trained model that follows it slowly."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the averaging decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        trained = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = trained[name].detach()
            if average.dtype.is_floating_point:
                average.lerp_(value, 1.0 - decay)
            else:
                average.copy_(value)

    @torch.no_grad()
    def restart(self, model: nn.Module) -> None:
        """Start averaging afresh from ``model`` (a new phase: the old average is another regime)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
