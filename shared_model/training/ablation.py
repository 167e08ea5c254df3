"""The paper's ablations on one shared schedule, with seeds, so that noise shows as noise.

Rows (Wu et al., ACM TECS 2023): Table 2 (the backbone, +ASP, +SFP, +ASP+SFP,
and the split adapter with and without), Table 3 (ASP on rows and columns only
against all four directions) and Figure 7 (SFP with the zero boundary, which
makes it a squeeze-and-excitation block, against the symmetric boundary with
1, 2 and 3 wavelet levels, and no SFP). Every row trains with the same
settings and the same seeds; only the network differs.

A finished run leaves ``result.json`` (its result and the settings it was
trained with) beside its ``best.pt`` and ``log.csv`` and drops its resume
state, so an ablation that outlasts one sitting resumes from small files:
finished runs are read back, not trained again, and an unfinished one
continues from its last epoch.

A row's difference from the reference row (the default network) is called
beyond noise when it is larger than the spread between seeds of each of the
two rows, the spread being the largest minus the smallest accuracy over the
seeds; both rows need two seeds or more.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import ASP, HORIZONTAL, SFP, STAGE2_CHANNELS, VERTICAL, ModelConfig
from .datasets import FaceDataset
from .fit import BEST_FILE, STATE_FILE, TrainSettings, fit, initial_model

__all__ = [
    "RESULT_FILE", "PLOT_FILE", "AblationRow", "ROWS", "REFERENCE_ROW", "RunResult", "RowSummary",
    "finished_run", "finished_runs", "summarize", "run_ablation", "write_tables", "plot_ablation",
]


@dataclass(frozen=True)
class AblationRow:
    """One network of the ablation: a name, the paper's table it belongs to, the config changes."""

    name: str
    table: str
    changes: dict[str, Any] = field(default_factory=dict)

    def config(self, class_names: tuple[str, ...], input_size: int) -> ModelConfig:
        return ModelConfig(class_names=class_names, input_size=input_size, **self.changes)


RESULT_FILE = "result.json"
PLOT_FILE = "ablation.png"  # beside the tables in the results folder
SEED_PREFIX = "seed"  # a run's folder is <row>/seed<k>
REFERENCE_ROW = "asp+sfp"
ROWS: tuple[AblationRow, ...] = (
    AblationRow("backbone, no adapter", "Table 2", {"attention": (), "adapter_width": STAGE2_CHANNELS}),
    AblationRow("backbone", "Table 2", {"attention": ()}),
    AblationRow("asp", "Table 2 / Figure 7 (no SFP)", {"attention": (ASP,)}),
    AblationRow("sfp", "Table 2", {"attention": (SFP,)}),
    AblationRow(REFERENCE_ROW, "Table 2 / Figure 7 (zero boundary = SE)", {}),
    AblationRow("asp+sfp, no adapter", "Table 2", {"adapter_width": STAGE2_CHANNELS}),
    AblationRow("asp+sfp, asp rows+columns", "Table 3", {"asp_directions": (HORIZONTAL, VERTICAL)}),
    AblationRow("asp+sfp, sfp symmetric, 1 level", "Figure 7", {"sfp_boundary": "symmetric", "sfp_levels": (1,)}),
    AblationRow("asp+sfp, sfp symmetric, 2 levels", "Figure 7", {"sfp_boundary": "symmetric", "sfp_levels": (1, 2)}),
    AblationRow("asp+sfp, sfp symmetric, 3 levels", "Figure 7", {"sfp_boundary": "symmetric", "sfp_levels": (1, 2, 3)}),
)


@dataclass(frozen=True)
class RunResult:
    row: str
    seed: int
    accuracy: float
    macro_f1: float
    epochs: int
    seconds: float


@dataclass(frozen=True)
class RowSummary:
    row: str
    table: str
    seeds: int
    mean_accuracy: float
    spread: float  # largest minus smallest accuracy over the seeds
    mean_macro_f1: float
    difference: float  # mean accuracy minus the reference row's
    beyond_noise: bool


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _run_dir(out_dir: Path, row: AblationRow, seed: int) -> Path:
    return out_dir / _slug(row.name) / f"{SEED_PREFIX}{seed}"


def run_ablation(
    train: FaceDataset,
    val: FaceDataset,
    out_dir: Path,
    settings: TrainSettings,
    seeds: Sequence[int],
    rows: Sequence[AblationRow] = ROWS,
    progress: bool = True,
    on_run: Callable[[RunResult], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[RunResult]:
    """Train every row with every seed (each run resumable in ``out_dir/<row>/seed<k>``)."""
    size = settings.epoch_sizes()[-1]
    results = []
    for row in rows:
        for seed in seeds:
            run_dir = _run_dir(out_dir, row, seed)
            run_settings = replace(settings, seed=seed)
            result = finished_run(run_dir, run_settings)
            if result is None:
                model = initial_model(row.config(train.class_names, size), seed).to(device)
                state = fit(model, train, val, run_dir, run_settings, {"ablation_row": row.name}, resume=True, progress=progress)
                best = state.history[state.best_epoch - 1]
                seconds = sum(record.seconds for record in state.history)  # every sitting's epochs
                result = RunResult(row.name, seed, best.val_accuracy, best.val_macro_f1, state.epoch, seconds)
                _record_finished(run_dir, run_settings, result)
            results.append(result)
            if on_run:
                on_run(result)
    return results


def finished_run(run_dir: Path, settings: TrainSettings) -> RunResult | None:
    """The result ``run_dir`` recorded when it finished, or None when it has not finished.

    A folder finished with other settings is refused: its row would not be
    comparable with the others.
    """
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    changed = settings.differences(record["settings"])
    if changed:
        raise ValueError(f"{run_dir} was trained with other settings ({', '.join(changed)} differ); "
                         "give the same settings, another --out, or remove that folder")
    return RunResult(**record["result"])


def finished_runs(
    out_dir: Path, settings: TrainSettings, seeds: Sequence[int], rows: Sequence[AblationRow] = ROWS
) -> list[RunResult]:
    """Every run under ``out_dir`` that finished with ``settings`` and one of ``seeds``, by row, then by seed.

    The tables are written from these, so that training some rows in one
    sitting never drops the rows finished in another, and every row is
    summarized over the same seeds.
    """
    results = []
    for row in rows:
        for seed in sorted(seeds):
            result = finished_run(_run_dir(out_dir, row, seed), replace(settings, seed=seed))
            if result is not None:
                results.append(result)
    return results


def _record_finished(run_dir: Path, settings: TrainSettings, result: RunResult) -> None:
    """Write ``result.json``, then drop the resume state, which a finished run no longer needs."""
    record = {"result": asdict(result), "settings": settings.to_dict()}
    temporary = run_dir / (RESULT_FILE + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(run_dir / RESULT_FILE)
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def summarize(results: Sequence[RunResult], rows: Sequence[AblationRow] = ROWS) -> list[RowSummary]:
    """Mean and spread per row, and whether its difference from the reference exceeds both spreads."""
    by_row = {row.name: [r for r in results if r.row == row.name] for row in rows}
    stats = {
        name: (statistics.fmean(r.accuracy for r in runs), max(r.accuracy for r in runs) - min(r.accuracy for r in runs))
        for name, runs in by_row.items() if runs
    }
    reference_mean, reference_spread = stats.get(REFERENCE_ROW, (float("nan"), 0.0))
    summaries = []
    for row in rows:
        runs = by_row[row.name]
        if not runs:
            continue
        mean, spread = stats[row.name]
        difference = mean - reference_mean
        summaries.append(RowSummary(
            row.name, row.table, len(runs), mean, spread, statistics.fmean(r.macro_f1 for r in runs), difference,
            row.name != REFERENCE_ROW and len(runs) > 1 and len(by_row.get(REFERENCE_ROW, [])) > 1
            and abs(difference) > max(spread, reference_spread),
        ))
    return summaries


def write_tables(out_dir: Path, results: Sequence[RunResult], summaries: Sequence[RowSummary]) -> tuple[Path, Path]:
    """``ablation_runs.csv`` (one line per run) and ``ablation.csv`` (one line per row)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_path, rows_path = out_dir / "ablation_runs.csv", out_dir / "ablation.csv"
    for path, records in ((runs_path, results), (rows_path, summaries)):
        with path.open("w", newline="") as handle:
            fields = list(records[0].__dataclass_fields__) if records else []
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows({name: getattr(r, name) for name in fields} for r in records)
    return runs_path, rows_path


def plot_ablation(path: Path, results: Sequence[RunResult], summaries: Sequence[RowSummary], title: str = "") -> Path:
    """One line per row: every seed's accuracy, the mean, and the reference row's mean and spread as a band.

    A row whose difference is beyond noise is drawn in colour; one within the
    noise in grey, so that what the table calls noise also looks like noise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [summary.row for summary in summaries]
    by_row = {name: [100 * r.accuracy for r in results if r.row == name] for name in names}
    height = 0.45 * len(names) + 2.0  # inches
    figure, axis = plt.subplots(figsize=(9, height))
    reference = next((s for s in summaries if s.row == REFERENCE_ROW), None)
    if reference is not None:
        runs = by_row[REFERENCE_ROW]
        axis.axvspan(min(runs), max(runs), color="tab:blue", alpha=0.12, label=f"{REFERENCE_ROW}: spread between seeds")
        axis.axvline(100 * reference.mean_accuracy, color="tab:blue", linestyle="--", linewidth=1, label=f"{REFERENCE_ROW}: mean")
    for position, summary in enumerate(summaries):
        colour = "tab:blue" if summary.row == REFERENCE_ROW else "tab:red" if summary.beyond_noise else "grey"
        accuracies = by_row[summary.row]
        axis.hlines(position, min(accuracies), max(accuracies), color=colour, linewidth=2)
        axis.plot(accuracies, [position] * len(accuracies), "o", color=colour, markersize=5, fillstyle="none")
        axis.plot([100 * summary.mean_accuracy], [position], "D", color=colour, markersize=7)
    axis.plot([], [], "o", color="grey", fillstyle="none", label="one seed")
    axis.plot([], [], "D", color="grey", label="mean (red: beyond both spreads)")
    axis.set_yticks(range(len(names)), [f"{s.row} ({s.seeds} seed{'' if s.seeds == 1 else 's'})" for s in summaries], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("validation accuracy, % (best epoch of each run)")
    axis.set_title(title or "Ablation: accuracy of every seed and the mean per row", fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    figure.legend(fontsize=7, loc="lower center", ncol=4)
    figure.tight_layout(rect=(0, 0.4 / height, 1, 1))  # the legend's strip under the axis
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
