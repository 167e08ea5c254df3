"""Measure: where one training step's time goes. Not a test.

Times the parts of the step that ``fer-train fit``'s phased recipe takes
(``train_one_epoch``): batched augmentation of uint8 faces, the forward pass
with the loss, the backward pass, the optimizer's step and the update of the
averaged weights, on batches drawn from ``--data`` at each ``--sizes``, with
the default network in ``channels_last``. Prints and writes (CSV) each part's
median milliseconds and its share of the step. A quiet machine only: pause a
training run first.

    python -m fer_bench.measure.training_step --data ../shared/data/fer2013/train \\
        --threads 2 --out results/training/step_profile.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from shared_model.config import ModelConfig
from shared_model.network import FERNet
from shared_model.training.augmentation import augment
from shared_model.training.datasets import FaceDataset, load_image_folder
from shared_model.training.fit import TrainSettings, build_optimizer
from shared_model.training.weight_average import WeightAverage

__all__ = ["PARTS", "time_steps", "main"]

PARTS = ("augmentation", "forward", "backward", "optimizer", "weight average")


def time_steps(data: FaceDataset, size: int, steps: int, warmup: int, settings: TrainSettings) -> dict[str, list[float]]:
    """Seconds of each part of ``steps`` training steps at ``size``, after ``warmup`` untimed ones."""
    model = FERNet(ModelConfig(class_names=data.class_names)).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, settings)
    average = WeightAverage(model, settings.ema_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    generator = torch.Generator().manual_seed(settings.seed)
    seconds: dict[str, list[float]] = {part: [] for part in PARTS}
    for step in range(warmup + steps):
        index = torch.randint(0, len(data), (settings.batch_size,), generator=generator)
        marks = [time.perf_counter()]
        x = augment(data.images[index], size, generator, settings.augmentation).contiguous(memory_format=torch.channels_last)
        marks.append(time.perf_counter())
        loss = criterion(model(x), data.labels[index])
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        average.update(model)
        marks.append(time.perf_counter())
        if step >= warmup:
            for part, start, end in zip(PARTS, marks, marks[1:]):
                seconds[part].append(end - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder of class subfolders (e.g. FER2013's train/)")
    parser.add_argument("--sizes", default="112,224", help="comma-separated input sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=TrainSettings().batch_size)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("results/training/step_profile.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_image_folder(args.data, progress=False)
    settings = TrainSettings(batch_size=args.batch_size)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        medians = {part: statistics.median(values) for part, values in time_steps(data, size, args.steps, args.warmup, settings).items()}
        step = sum(medians.values())
        for part in PARTS:
            rows.append({"size": size, "batch": args.batch_size, "threads": args.threads, "steps": args.steps,
                         "part": part, "median_ms": round(medians[part] * 1000, 2), "share": round(medians[part] / step, 4)})
        print(f"{size}x{size}: step {step * 1000:.0f} ms; " + ", ".join(
            f"{part} {medians[part] * 1000:.1f} ms ({medians[part] / step:.0%})" for part in PARTS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
