"""Training with resumable checkpoints, per-epoch validation, a CSV log and curves.

Two recipes:

- ``phased`` (default): the parts that published FER2013 recipes share, fitted to a CPU.
  Phases of increasing input size (``--schedule 112:60,224:10``): most epochs at
  low resolution (FER2013 faces are 48x48, so 112 loses little and costs a
  quarter of 224), then a fine-tune at 224, the size the split needs. Each phase
  warms the learning rate up linearly and decays it along a cosine towards zero; the
  first peaks at ``lr``, later ones at ``lr * later_phase_lr`` (a fine-tune, not
  a restart). Nesterov SGD, label smoothing, weight decay on weights only,
  random crop, rotation, translation, flip, brightness and contrast, random
  erasing. An exponential moving average of the weights (restarted at each
  phase, since BatchNorm's statistics change with the input size) is what is
  validated, chosen and shipped.
- ``paper``: the paper's recipe (SGD momentum 0.9, batch 128, learning rate 0.1
  divided by 10 every 30 epochs, 100 epochs at 224), without averaging.

Either recipe may also distil from teachers' soft labels (``distillation_weight``;
see :mod:`.distillation`).

A slice of the training split (``calibration_fraction``) is never trained on:
it is where ``fer-train calibrate`` fits the temperature. Checkpoints are chosen
on the validation split alone, at the final input size.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..checkpoint import save_checkpoint
from ..config import ModelConfig
from ..network import FERNet
from .augmentation import Augmentation, augment
from .calibration import calibration_holdout
from .datasets import FaceDataset
from .distillation import distillation_loss
from .evaluation import classification_report, predict_probabilities
from .weight_average import WeightAverage

__all__ = [
    "RECIPES", "SETTINGS_BEFORE_THEY_EXISTED", "STATE_FILE", "BEST_FILE", "LOG_FILE", "CURVES_FILE", "Phase", "parse_schedule", "TrainSettings",
    "learning_rate_factor", "build_optimizer", "EpochRecord", "TrainState", "initial_model", "train_one_epoch",
    "validate", "fit", "check_resumable", "write_log", "read_log", "chain_runs", "plot_curves",
]

RECIPES = ("phased", "paper")
STATE_FILE = "train_state.pt"
BEST_FILE = "best.pt"
LOG_FILE = "log.csv"
CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class Phase:
    size: int
    epochs: int


def parse_schedule(text: str) -> list[Phase]:
    """``"112:60,224:10"`` -> 60 epochs at 112x112, then 10 at 224x224."""
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
    """Everything that decides a training run (stored in the checkpoint's provenance)."""

    recipe: str = "phased"
    schedule: str = "112:60,224:10"
    batch_size: int = 128
    lr: float = 0.1
    later_phase_lr: float = 0.3  # phased: peak of every phase after the first, as a fraction of lr
    warmup_fraction: float = 0.05  # phased: linear warm-up over this fraction of each phase
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    ema_decay: float = 0.999  # 0: no weight averaging (the trained weights are shipped)
    calibration_fraction: float = 0.05  # of every training class, held out for the temperature
    distillation_weight: float = 0.0  # share of the loss given to the teachers' soft labels (0: no distillation)
    distillation_temperature: float = 2.0  # divides the teachers' raw and the student's class scores alike
    teachers: tuple[str, ...] = ()  # fingerprints of the teachers whose soft labels the run trains towards
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    step_epochs: int = 30  # paper recipe: divide the learning rate by 10 this often
    max_steps_per_epoch: int | None = None  # for smoke tests

    def phases(self) -> list[Phase]:
        return parse_schedule(self.schedule)

    def epoch_sizes(self) -> list[int]:
        return [p.size for p in self.phases() for _ in range(p.epochs)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists): what checkpoints record and a resumed run is compared with."""
        return json.loads(json.dumps(asdict(self)))

    def differences(self, recorded: dict[str, Any], allowed: frozenset[str] = frozenset()) -> list[str]:
        """The settings, ``allowed`` aside, in which ``recorded`` (a :meth:`to_dict`) is not these.

        A setting of :data:`SETTINGS_BEFORE_THEY_EXISTED` that ``recorded`` lacks
        was added after it was written: it counts as the value it stands for.
        """
        wanted, missing = self.to_dict(), object()
        return sorted(
            key for key in wanted
            if key not in allowed and recorded.get(key, SETTINGS_BEFORE_THEY_EXISTED.get(key, missing)) != wanted[key]
        )

    @classmethod
    def paper(cls, **changes: Any) -> "TrainSettings":
        """The paper's recipe: plain momentum, step decay, no averaging, no erasing."""
        defaults = dict(recipe="paper", schedule="224:100", ema_decay=0.0, augmentation=Augmentation(erase_probability=0.0))
        return cls(**{**defaults, **changes})


# The value each setting added after runs were first recorded had before it existed (a recorded run
# lacking it was trained that way), as plain JSON values like to_dict's. Any other missing setting differs.
SETTINGS_BEFORE_THEY_EXISTED = {"distillation_weight": 0.0, "distillation_temperature": 2.0, "teachers": []}


def learning_rate_factor(settings: TrainSettings, steps_per_epoch: int, step: int) -> float:
    """The learning rate at optimizer step ``step`` as a fraction of ``settings.lr``."""
    if settings.recipe == "paper":
        return 0.1 ** (step // (settings.step_epochs * steps_per_epoch))
    start = 0
    for number, phase in enumerate(settings.phases()):
        length = phase.epochs * steps_per_epoch
        if step < start + length or number == len(settings.phases()) - 1:
            peak = 1.0 if number == 0 else settings.later_phase_lr
            warmup = max(1, round(settings.warmup_fraction * length))
            into = min(step - start, length - 1)
            if into < warmup:
                return peak * (into + 1) / warmup
            progress = (into - warmup) / max(length - warmup, 1)
            return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
        start += length
    raise AssertionError("unreachable: the last phase takes every later step")


@dataclass
class EpochRecord:
    epoch: int
    size: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float  # of the weights that ship: the average where there is one
    val_macro_f1: float
    trained_val_accuracy: float  # of the weights being trained, for comparison
    seconds: float


@dataclass
class TrainState:
    epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD as the recipe sets it: Nesterov momentum for ``phased``, weight decay on weights only."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.recipe != "paper",
    )


def initial_model(config: ModelConfig, seed: int) -> FERNet:
    """The network with initial weights drawn from ``seed`` alone.

    Not from whatever the random generator holds when it is built: a run's
    start then depends on its seed, not on the runs before it in the process.
    """
    torch.manual_seed(seed)
    return FERNet(config)


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
    average: WeightAverage | None,
    progress: bool,
    description: str,
) -> tuple[float, float]:
    """One pass over ``data`` (last partial batch dropped); returns mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(data), generator=generator)
    steps = _steps_per_epoch(len(data), settings)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    weight, temperature = settings.distillation_weight, settings.distillation_temperature
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc=description, unit="batch", disable=not progress, leave=False)
    for step in bar:
        index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        x = augment(data.images[index], size, generator, settings.augmentation)
        x = x.to(next(model.parameters()).device).contiguous(memory_format=torch.channels_last)
        y = data.labels[index].to(x.device)
        logits = model(x)
        loss = criterion(logits, y)
        if weight > 0:
            soft = data.soft_labels[index].to(x.device)
            loss = (1 - weight) * loss + weight * distillation_loss(logits, soft, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update(model)
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def validate(model: FERNet, data: FaceDataset, size: int) -> tuple[float, float, float]:
    """Validation loss, accuracy and macro-F1 of ``model`` at input ``size``."""
    probabilities = predict_probabilities(model, data, size)
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), data.labels).item()
    report = classification_report(data.labels, probabilities.argmax(1), data.class_names)
    return loss, report.accuracy, report.macro_f1


def _phase_starts(settings: TrainSettings) -> set[int]:
    """Epoch numbers (1-based) that begin a phase after the first."""
    starts, epoch = set(), 1
    for phase in settings.phases():
        starts.add(epoch)
        epoch += phase.epochs
    return starts - {1}


@dataclass
class _Run:
    """What a run carries from one epoch to the next, and what its state file holds."""

    model: FERNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    average: WeightAverage | None
    state: TrainState = field(default_factory=TrainState)

    @property
    def shipped(self) -> nn.Module:
        """The weights that are validated, chosen and shipped: the average where there is one."""
        return self.average.module if self.average is not None else self.model


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
    """Train, validating and checkpointing every epoch; ``resume`` continues from ``out_dir``.

    ``settings.calibration_fraction`` of ``train_data`` is left out (see
    :func:`calibration_holdout`). A resumed run may be given a longer or
    shorter ``schedule``: the learning-rate curve is a function of the step, so
    it follows the new plan from where the run stands.
    """
    if settings.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {settings.recipe!r}; expected one of {RECIPES}")
    if settings.distillation_weight > 0 and train_data.soft_labels is None:
        raise ValueError("distillation needs the teachers' soft labels on the training data (see soft_labels_for)")
    if not 0.0 <= settings.distillation_weight <= 1.0:
        raise ValueError(f"the distillation weight must be in [0, 1], got {settings.distillation_weight}")
    if settings.distillation_temperature <= 0:
        raise ValueError(f"the distillation temperature must be positive, got {settings.distillation_temperature}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_data, held_out = calibration_holdout(train_data, settings.calibration_fraction)
    run = _start_run(model, settings, _steps_per_epoch(len(train_data), settings))
    if resume and (out_dir / STATE_FILE).exists():
        run.state = _load_state(out_dir / STATE_FILE, run, settings)
    epoch_sizes = settings.epoch_sizes()
    best = run.state.best_epoch
    if best and run.state.history[best - 1].size != epoch_sizes[-1]:
        run.state.best_accuracy, run.state.best_epoch = -1.0, 0  # best.pt is chosen at the final size, which has changed
    info = {
        **(provenance or {}), "recipe": settings.to_dict(),
        "train_images": len(train_data), "calibration_images": len(held_out),
    }
    for epoch in range(run.state.epoch + 1, len(epoch_sizes) + 1):
        description = f"epoch {epoch}/{len(epoch_sizes)} @{epoch_sizes[epoch - 1]}"
        record = _train_and_validate(run, train_data, val_data, settings, epoch, epoch_sizes[epoch - 1], description, progress)
        _record_epoch(out_dir, run, record, settings, info, final_size=epoch_sizes[-1])
        if on_epoch:
            on_epoch(record)
    return run.state


def _start_run(model: FERNet, settings: TrainSettings, steps_per_epoch: int) -> _Run:
    """Seed, optimizer, learning-rate schedule and averaged weights of a new run."""
    torch.set_flush_denormal(True)  # weights decaying towards zero must not fall onto the CPU's slow path
    generator = _seed_everything(settings.seed)
    model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(settings, steps_per_epoch, step)
    )
    average = WeightAverage(model, settings.ema_decay) if settings.ema_decay > 0 else None
    return _Run(model, optimizer, scheduler, generator, average)


def _train_and_validate(
    run: _Run, train_data: FaceDataset, val_data: FaceDataset, settings: TrainSettings, epoch: int, size: int,
    description: str, progress: bool,
) -> EpochRecord:
    """Train epoch ``epoch`` (1-based) at input ``size`` and validate the shipped and the trained weights."""
    if run.average is not None and epoch in _phase_starts(settings):
        run.average.restart(run.model)
    started = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    train_loss, train_acc = train_one_epoch(
        run.model, train_data, size, run.optimizer, run.scheduler, settings, run.generator, run.average, progress,
        description,
    )
    val_loss, val_acc, val_f1 = validate(run.shipped, val_data, size)
    trained_acc = val_acc if run.shipped is run.model else validate(run.model, val_data, size)[1]
    return EpochRecord(
        epoch, size, lr, train_loss, train_acc, val_loss, val_acc, val_f1, trained_acc, time.perf_counter() - started
    )


def _record_epoch(
    out_dir: Path, run: _Run, record: EpochRecord, settings: TrainSettings, info: dict[str, Any], final_size: int,
) -> None:
    """Add the epoch to the history; save best.pt if it is the best at the final size, then the state, log and curves."""
    state = run.state
    state.history.append(record)
    state.epoch = record.epoch
    if record.size == final_size and record.val_accuracy > state.best_accuracy:
        state.best_accuracy, state.best_epoch = record.val_accuracy, record.epoch
        save_checkpoint(run.shipped, out_dir / BEST_FILE, {
            **info, "epochs_trained": record.epoch, "validation_accuracy": record.val_accuracy,
            "validation_size": record.size,
        })
    _save_state(out_dir / STATE_FILE, run, settings)
    write_log(out_dir / LOG_FILE, state.history)
    plot_curves(out_dir / CURVES_FILE, state.history)


def _steps_per_epoch(images: int, settings: TrainSettings) -> int:
    """Full batches in an epoch (the last partial one is dropped), capped by ``max_steps_per_epoch``."""
    steps = images // settings.batch_size
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"{images} training images make no batch of {settings.batch_size}")
    return steps


def _save_state(path: Path, run: _Run, settings: TrainSettings) -> None:
    """Everything a resumed run needs, written atomically."""
    state = run.state
    payload = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "average": run.average.state_dict() if run.average is not None else None,
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": state.epoch,
        "history": [asdict(r) for r in state.history],
        "best_accuracy": state.best_accuracy,
        "best_epoch": state.best_epoch,
        "settings": settings.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


# What a resumed run may change: the rest would continue under the old optimizer and steps while
# the checkpoints recorded the new settings.
RESUMABLE_CHANGES = frozenset({"schedule"})


def check_resumable(out_dir: str | Path, settings: TrainSettings) -> None:
    """Refuse, before any work, to resume the run in ``out_dir`` with other settings than it was trained with."""
    path = Path(out_dir) / STATE_FILE
    if path.exists():
        _check_state(path, torch.load(path, map_location="cpu", weights_only=False), settings)


def _check_state(path: Path, payload: dict[str, Any], settings: TrainSettings) -> None:
    if payload["history"] and "trained_val_accuracy" not in payload["history"][0]:
        raise ValueError(f"{path} was written by an older recipe; start a new run folder")
    saved = payload.get("settings")
    if saved is not None:
        changed = settings.differences(saved, RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"{path} was trained with other settings ({', '.join(changed)} differ); a resumed run "
                             f"may change only its {', '.join(sorted(RESUMABLE_CHANGES))}: give the same settings or "
                             "another --out")


def _load_state(path: Path, run: _Run, settings: TrainSettings) -> TrainState:
    """Restore ``run`` from its state file; refuses a file trained with other settings."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    _check_state(path, payload, settings)
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    scheduler = run.scheduler
    scheduler.load_state_dict(payload["scheduler"])
    for group, base, factor in zip(run.optimizer.param_groups, scheduler.base_lrs, (f(scheduler.last_epoch) for f in scheduler.lr_lambdas)):
        group["lr"] = base * factor  # the schedule may have changed since the state was saved
    if run.average is not None and payload.get("average"):
        run.average.load_state_dict(payload["average"])
    run.generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return TrainState(
        epoch=payload["epoch"],
        history=[EpochRecord(**r) for r in payload["history"]],
        best_accuracy=payload["best_accuracy"],
        best_epoch=payload["best_epoch"],
    )


def write_log(path: Path, history: list[EpochRecord]) -> None:
    """One CSV row per epoch, the fields of :class:`EpochRecord`."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)


def read_log(path: Path) -> list[EpochRecord]:
    """The epochs of a ``log.csv`` that :func:`write_log` wrote; ValueError names what is wrong with another file."""
    columns = {f.name: str(f.type) for f in fields(EpochRecord)}  # "int" or "float"
    try:
        with Path(path).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"cannot read the training log {path}: {error}") from None
    if not rows:
        raise ValueError(f"{path} holds no epochs")
    missing = sorted(set(columns) - set(rows[0]))
    if missing:
        raise ValueError(f"{path} is not a training log: no column {', '.join(missing)}")
    records = []
    for line, row in enumerate(rows, 2):
        try:
            records.append(EpochRecord(**{name: (int if kind == "int" else float)(row[name]) for name, kind in columns.items()}))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} line {line}: {error}") from None
    return records


def chain_runs(runs: Sequence[list[EpochRecord]]) -> tuple[list[EpochRecord], list[int]]:
    """Runs that each started from the one before, as one history numbered end to end, and where each later run starts."""
    history: list[EpochRecord] = []
    starts: list[int] = []
    for run in runs:
        if history:
            starts.append(len(history) + 1)
        offset = len(history)
        history.extend(replace(record, epoch=offset + k) for k, record in enumerate(run, 1))
    return history, starts


def plot_curves(path: Path, history: list[EpochRecord], run_starts: Sequence[int] = ()) -> None:
    """Loss and accuracy per epoch; the validation accuracy of the shipped and trained weights apart.

    Dotted lines mark where the input size changes, dashed ones where a later run
    (``run_starts``, see :func:`chain_runs`) begins.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label="train (augmented, smoothed labels)")
    loss_axis.plot(epochs, [r.val_loss for r in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    accuracy_axis.plot(epochs, [r.train_accuracy for r in history], label="train (augmented)")
    accuracy_axis.plot(epochs, [r.trained_val_accuracy for r in history], label="validation, trained weights", alpha=0.6)
    accuracy_axis.plot(epochs, [r.val_accuracy for r in history], label="validation, shipped weights")
    borders = "dotted: input size changes" + ("; dashed: the next run" if run_starts else "")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title=f"Accuracy ({borders})")
    for start in sorted({r.epoch for r, prev in zip(history[1:], history) if r.size != prev.size}):
        for axis in (loss_axis, accuracy_axis):
            axis.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
    for start in run_starts:
        for axis in (loss_axis, accuracy_axis):
            axis.axvline(start - 0.5, color="black", linestyle="--", linewidth=1)
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
