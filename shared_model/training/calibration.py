"""Confidence that means what it says: a held-out slice, temperature scaling, calibration error.

Guo et al., "On Calibration of Modern Neural Networks", ICML 2017: dividing the
logits by one temperature T, fitted by minimizing the negative log-likelihood on
data the network was not trained on, makes the softmax's top probability match
how often the top class is right, without changing any prediction.

The slice that T is fitted on comes out of the training split, never out of the
validation split (models are chosen on validation; fitting on it too would
reuse it). :func:`calibration_holdout` draws the same slice every time from the
same data, whatever the training seed, so that ``fer-train fit`` can leave it
out and ``fer-train calibrate`` can find it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .datasets import FaceDataset

__all__ = [
    "HOLDOUT_SEED", "ECE_BINS", "calibration_holdout", "fit_temperature", "ReliabilityBins",
    "reliability_bins", "expected_calibration_error", "ece_interval", "plot_reliability", "TemperatureFit",
    "fit_temperature_on",
]

HOLDOUT_SEED = 2013  # fixed: the held-out slice must not depend on a run's training seed
ECE_BINS = 15
ECE_RESAMPLES = 1000
_BOOTSTRAP_DRAWS = 4_000_000  # faces drawn per batch of resamples


def calibration_holdout(dataset: FaceDataset, fraction: float) -> tuple[FaceDataset, FaceDataset]:
    """``(train, held_out)``: ``fraction`` of every class drawn out of ``dataset`` (deterministic).

    Stratified, so a rare class is held out in proportion; each class keeps at
    least one training image. ``fraction`` 0 holds nothing out.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    held: list[Tensor] = []
    for code in range(len(dataset.class_names)):
        members = (dataset.labels == code).nonzero().flatten()
        count = min(int(round(fraction * len(members))), max(len(members) - 1, 0))
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    held_index = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.long)
    keep = torch.ones(len(dataset), dtype=torch.bool)
    keep[held_index] = False
    return dataset.subset(keep.nonzero().flatten()), dataset.subset(held_index)


def fit_temperature(logits: Tensor, labels: Tensor, low: float = 0.05, high: float = 20.0, steps: int = 60) -> float:
    """The T > 0 minimizing the mean NLL of ``softmax(logits / T)`` (golden-section search on log T).

    The NLL of temperature-scaled logits is convex in 1/T, so a bracketing search
    finds the one minimum without a learning rate to tune.
    """
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"need logits (N, classes) and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    f_c, f_d = nll(c), nll(d)
    for _ in range(steps):
        if f_c < f_d:
            b, d, f_d = d, c, f_c
            c = b - ratio * (b - a)
            f_c = nll(c)
        else:
            a, c, f_c = c, d, f_d
            d = a + ratio * (b - a)
            f_d = nll(d)
    return math.exp((a + b) / 2)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: faces, mean confidence and accuracy in each (NaN where empty)."""

    edges: list[float]
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, list]:
        return {"edges": self.edges, "counts": self.counts, "confidence": self.confidence, "accuracy": self.accuracy}


def _binned(probabilities: Tensor, labels: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each face's top probability, whether its top class is right (0/1) and its bin."""
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == labels).double()
    # A float32 probability on a bin edge (0.6 is 0.6000000238) belongs to the bin below it.
    index = (confidence * bins - 1e-6).ceil().long().clamp(1, bins) - 1
    return confidence, correct, index


def reliability_bins(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin the faces by top probability; bin i holds confidences in (i/bins, (i+1)/bins]."""
    confidence, correct, index = _binned(probabilities, labels, bins)
    counts = torch.bincount(index, minlength=bins)
    sum_confidence = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    sum_correct = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = counts.clamp(min=1).double()
    empty = counts == 0
    return ReliabilityBins(
        edges=[i / bins for i in range(bins + 1)],
        counts=counts.tolist(),
        confidence=(sum_confidence / safe).masked_fill(empty, float("nan")).tolist(),
        accuracy=(sum_correct / safe).masked_fill(empty, float("nan")).tolist(),
    )


def expected_calibration_error(bins: ReliabilityBins) -> float:
    """ECE: the face-weighted mean of |accuracy - confidence| over the bins."""
    total = bins.total
    if total == 0:
        return 0.0
    return sum(n / total * abs(a - c) for n, a, c in zip(bins.counts, bins.accuracy, bins.confidence) if n)


def ece_interval(
    probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS, resamples: int = ECE_RESAMPLES, seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the ECE: faces drawn with replacement ``resamples`` times.

    It shows how much the ECE of this many faces moves by chance alone, so
    that two ECEs, or an ECE and a goal, can be told apart from noise. ECE is
    biased upwards on a finite sample (each bin's gap is taken as an absolute
    value, so its noise never cancels), and a resample's ECE more so, so the
    interval can sit a little above the point estimate.
    """
    total = len(labels)
    if total == 0:
        return (0.0, 0.0)
    confidence, correct, index = _binned(probabilities, labels, bins)
    # A bin's confidence minus hit per face: summed per bin, |sum| / N is the bin's weighted |confidence - accuracy|.
    surplus = confidence - correct
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _BOOTSTRAP_DRAWS // total)  # resamples at a time, to bound memory on large sets
    errors = []
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        draws = torch.randint(0, total, (count, total), generator=generator)
        slot = (torch.arange(count).unsqueeze(1) * bins + index[draws]).flatten()
        gap = torch.zeros(count * bins, dtype=torch.float64).index_add_(0, slot, surplus[draws].flatten())
        errors.append(gap.abs().view(count, bins).sum(dim=1) / total)
    ordered = torch.cat(errors).sort().values
    return (float(ordered[int(0.025 * (resamples - 1))]), float(ordered[int(0.975 * (resamples - 1))]))


def plot_reliability(curves: dict[str, ReliabilityBins], path, title: str) -> None:
    """Reliability diagram: accuracy against confidence per bin, one line per named curve, with ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, bins in curves.items():
        points = [(c, a) for n, c, a in zip(bins.counts, bins.confidence, bins.accuracy) if n]
        axis.plot(*zip(*points), marker="o", label=f"{name} (ECE {expected_calibration_error(bins):.3f})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title=title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the slice it was fitted on."""

    temperature: float
    images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def fit_temperature_on(scores: Tensor, labels: Tensor, current: float = 1.0) -> TemperatureFit:
    """Fit on ``scores`` (already divided by ``current``); the result is the new total temperature."""
    extra = fit_temperature(scores, labels)
    before = scores.double().softmax(dim=1)
    after = (scores.double() / extra).softmax(dim=1)

    def nll(probabilities: Tensor) -> float:
        return float(torch.nn.functional.nll_loss(probabilities.clamp_min(1e-300).log(), labels.long()))

    return TemperatureFit(
        temperature=current * extra,
        images=int(labels.numel()),
        nll_before=nll(before),
        nll_after=nll(after),
        ece_before=expected_calibration_error(reliability_bins(before, labels)),
        ece_after=expected_calibration_error(reliability_bins(after, labels)),
    )
