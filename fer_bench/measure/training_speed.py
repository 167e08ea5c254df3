"""Measure: seconds per training epoch of this checkout's ``fer-train fit`` against another checkout's. Not a test.

Each round runs one epoch (``--schedule``, default one epoch at 112x112) of
each checkout's default recipe on the same data, the checkouts taking turns and
the first of them alternating from round to round, each in a process of its own
(``python -m shared_model.training.cli fit`` with the checkout first on
``PYTHONPATH``) with the same threads. Per run it keeps the epoch's seconds as
``log.csv`` records them (training steps and validation) and the process's
wall-clock seconds (data loading included). Writes every run to ``--out``
(CSV) and prints each checkout's medians and the ratio of the medians.
A quiet machine only: pause a training run first.

    git worktree add /tmp/before d7360cd
    .venv/bin/python -m fer_bench.measure.training_speed --data ../shared/data/fer2013 \\
        --baseline /tmp/before --rounds 2 --out results/training/epoch_speed.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["run_epoch", "main"]

ROOT = Path(__file__).resolve().parents[2]


def run_epoch(checkout: Path, data: Path, schedule: str, threads: int, folder: Path,
              batch_size: int | None = None) -> tuple[float, float]:
    """One ``fer-train fit`` of ``checkout`` into ``folder``: (the epoch's seconds from log.csv, the process's seconds)."""
    command = [sys.executable, "-m", "shared_model.training.cli", "fit", "--data", str(data), "--out", str(folder),
               "--schedule", schedule, "--threads", str(threads)]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"fer-train fit of {checkout} failed:\n{done.stderr[-3000:]}")
    with open(folder / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sum(float(row["seconds"]) for row in rows), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with train/ and public_test/")
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--schedule", default="112:1", help="what each run trains")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each recipe's own")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=Path("results/training/epoch_speed.csv"))
    args = parser.parse_args(argv)
    if not (args.baseline / "shared_model" / "training" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline} is not a checkout of this project (no shared_model/training/cli.py)")
    checkouts = {"before": args.baseline.resolve(), "after": ROOT}
    rows = []
    for round_ in range(args.rounds):
        order = list(checkouts.items())
        for label, checkout in order if round_ % 2 == 0 else order[::-1]:
            with tempfile.TemporaryDirectory(prefix="fer-epoch-") as tmp:
                epoch, wall = run_epoch(checkout, args.data.resolve(), args.schedule, args.threads, Path(tmp) / "run",
                                        args.batch_size)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
            rows.append({"checkout": label, "commit": commit, "round": round_, "schedule": args.schedule, "threads": args.threads,
                         "epoch_seconds": round(epoch, 1), "process_seconds": round(wall, 1)})
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    medians = {label: statistics.median(r["epoch_seconds"] for r in rows if r["checkout"] == label) for label in checkouts}
    print(f"epoch seconds, median: before {medians['before']:.1f}, after {medians['after']:.1f}, "
          f"after / before {medians['after'] / medians['before']:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
