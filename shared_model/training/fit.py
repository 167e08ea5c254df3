"""Training with resumable checkpoints, per-epoch validation, a CSV log and curves.

Two recipes:

- ``paper``: the paper's recipe (SGD momentum 0.9, batch 128, learning rate 0.1
  divided by 10 every 30 epochs, 100 epochs at 224x224).
- ``progressive`` (default): a one-cycle SGD schedule over phases of increasing
  input size, e.g. ``112:17,224:1``: most epochs at low resolution (FER2013 faces
  are 48x48, so 112 loses nothing), the last ones at 224, the size the split
  needs, so BatchNorm and filters settle at the deployed scale.

Augmentation runs on whole batches of uint8 faces decoded once: one random
affine warp (scale, rotation, shift, mirror) per face via ``grid_sample``, which
also resizes, then brightness and contrast jitter.
"""

from __future__ import annotations

import csv
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..checkpoint import save_checkpoint
from .datasets import FaceDataset
from .evaluation import classification_report, predict_probabilities
from ..network import FERNet
from ..preprocessing import normalize

__all__ = [
    "RECIPES", "STATE_FILE", "BEST_FILE", "LOG_FILE", "CURVES_FILE", "Phase", "parse_schedule", "TrainSettings",
    "EpochRecord", "TrainState", "augment", "train_one_epoch", "validate", "fit", "write_log", "plot_curves",
]

RECIPES = ("progressive", "paper")
STATE_FILE = "train_state.pt"
BEST_FILE = "best.pt"
LOG_FILE = "log.csv"
CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class Phase:
    size: int
    epochs: int


def parse_schedule(text: str) -> list[Phase]:
    """``"112:17,224:1"`` -> 17 epochs at 112x112, then 1 at 224x224."""
    phases = []
    for part in text.split(","):
        try:
            size, epochs = (int(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"schedule items are SIZE:EPOCHS, got {part!r}") from None
        if size < 32 or size % 8 or epochs < 1:
            raise ValueError(f"schedule item {part!r}: size must be a multiple of 8 (>= 32) and epochs >= 1")
        phases.append(Phase(size, epochs))
    return phases


@dataclass
class TrainSettings:
    recipe: str = "progressive"
    schedule: str = "112:17,224:1"
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    step_epochs: int = 30  # paper recipe: divide the learning rate by 10 this often
    max_steps_per_epoch: int | None = None  # for smoke tests

    def phases(self) -> list[Phase]:
        return parse_schedule(self.schedule)

    def epoch_sizes(self) -> list[int]:
        return [p.size for p in self.phases() for _ in range(p.epochs)]


@dataclass
class EpochRecord:
    epoch: int
    size: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainState:
    epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0


def augment(gray: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Random affine warp + mirror + photometric jitter: uint8 (B, H, W) -> normalized (B, 3, size, size)."""
    batch = gray.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(batch, generator=generator) * (high - low) + low

    zoom = uniform(0.8, 1.0)  # fraction of the face seen: a random crop
    angle = uniform(-12, 12) * math.pi / 180
    mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, uniform(-0.1, 0.1)], dim=1),
            torch.stack([sin * mirror, cos, uniform(-0.1, 0.1)], dim=1),
        ],
        dim=1,
    )
    x = gray.unsqueeze(1).float().div_(255.0)
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(0.75, 1.25).view(-1, 1, 1, 1)
    brightness = uniform(-0.1, 0.1).view(-1, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp_(0, 1)
    return normalize(x).expand(-1, 3, -1, -1)


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.recipe != "paper",
    )


def _scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int) -> Any:
    if settings.recipe == "paper":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.step_epochs * steps_per_epoch, gamma=0.1)
    total = len(settings.epoch_sizes()) * steps_per_epoch
    if total < 8:  # too short for a one-cycle curve (smoke runs): constant learning rate
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # At least two warm-up steps: OneCycleLR divides by zero on shorter warm-ups.
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=total, pct_start=max(0.25, 2.0 / total))


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    data: FaceDataset,
    size: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    settings: TrainSettings,
    generator: torch.Generator,
    progress: bool,
    description: str,
) -> tuple[float, float]:
    """One pass over ``data`` (last partial batch dropped); returns mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(data), generator=generator)
    steps = len(data) // settings.batch_size
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc=description, unit="batch", disable=not progress, leave=False)
    for step in bar:
        index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        x = augment(data.images[index], size, generator).contiguous(memory_format=torch.channels_last)
        y = data.labels[index]
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def validate(model: FERNet, data: FaceDataset, size: int) -> tuple[float, float]:
    probabilities = predict_probabilities(model, data, size)
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), data.labels).item()
    report = classification_report(data.labels, probabilities.argmax(1), data.class_names)
    return loss, report.accuracy


def fit(
    model: FERNet,
    train_data: FaceDataset,
    val_data: FaceDataset,
    out_dir: str | Path,
    settings: TrainSettings,
    provenance: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainState:
    """Train, validating and checkpointing every epoch; ``resume`` continues from ``out_dir``."""
    if settings.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {settings.recipe!r}; expected one of {RECIPES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epoch_sizes = settings.epoch_sizes()
    steps_per_epoch = len(train_data) // settings.batch_size
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_data)} training images make no batch of {settings.batch_size}")
    generator = _seed_everything(settings.seed)
    model.to(memory_format=torch.channels_last)  # about 10% faster convolutions on CPU
    optimizer = _optimizer(model, settings)
    scheduler = _scheduler(optimizer, settings, steps_per_epoch)
    state = TrainState()
    if resume and (out_dir / STATE_FILE).exists():
        state = _load_state(out_dir / STATE_FILE, model, optimizer, scheduler, generator)
        if getattr(scheduler, "total_steps", None) not in (None, len(epoch_sizes) * steps_per_epoch):
            # Resumed with another --schedule: re-plan the rest of the learning-rate curve.
            scheduler = _scheduler(optimizer, settings, steps_per_epoch)
            with warnings.catch_warnings():  # stepping a fresh scheduler forward without training is the point here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(state.epoch * steps_per_epoch):
                    scheduler.step()
    final_size = epoch_sizes[-1]
    for epoch in range(state.epoch + 1, len(epoch_sizes) + 1):
        size = epoch_sizes[epoch - 1]
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(
            model, train_data, size, optimizer, scheduler, settings, generator, progress, f"epoch {epoch}/{len(epoch_sizes)} @{size}"
        )
        val_loss, val_acc = validate(model, val_data, size)
        record = EpochRecord(epoch, size, lr, train_loss, train_acc, val_loss, val_acc, time.perf_counter() - started)
        state.history.append(record)
        state.epoch = epoch
        if size == final_size and val_acc > state.best_accuracy:
            state.best_accuracy, state.best_epoch = val_acc, epoch
            info = {**(provenance or {}), "recipe": asdict(settings), "epochs_trained": epoch, "validation_accuracy": val_acc, "validation_size": size}
            save_checkpoint(model, out_dir / BEST_FILE, info)
        _save_state(out_dir / STATE_FILE, model, optimizer, scheduler, generator, state)
        write_log(out_dir / LOG_FILE, state.history)
        plot_curves(out_dir / CURVES_FILE, state.history)
        if on_epoch:
            on_epoch(record)
    return state


def _save_state(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, generator: torch.Generator, state: TrainState) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": state.epoch,
        "history": [asdict(r) for r in state.history],
        "best_accuracy": state.best_accuracy,
        "best_epoch": state.best_epoch,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_state(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, generator: torch.Generator) -> TrainState:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return TrainState(
        epoch=payload["epoch"],
        history=[EpochRecord(**r) for r in payload["history"]],
        best_accuracy=payload["best_accuracy"],
        best_epoch=payload["best_epoch"],
    )


def write_log(path: Path, history: list[EpochRecord]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)


def plot_curves(path: Path, history: list[EpochRecord]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label="train")
    loss_axis.plot(epochs, [r.val_loss for r in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    accuracy_axis.plot(epochs, [r.train_accuracy for r in history], label="train")
    accuracy_axis.plot(epochs, [r.val_accuracy for r in history], label="validation")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
