"""Predictions and classification metrics on a decoded face dataset.

Every accuracy carries its 95 % Wilson score interval (Wilson, JASA 1927), so
that a difference within sampling noise shows as such, and every evaluation
reports the expected calibration error of its probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .calibration import ECE_BINS, ECE_RESAMPLES, ReliabilityBins, ece_interval, expected_calibration_error, reliability_bins
from .datasets import FaceDataset
from ..network import FERNet
from ..preprocessing import gray_batch_to_tensor

__all__ = [
    "SINGLE_CROP", "FLIP_TTA", "wilson_interval", "predict_scores", "predict_probabilities", "ClassificationReport",
    "confusion_matrix", "classification_report", "restricted_predictions", "Evaluation",
    "evaluation_from_probabilities", "evaluate", "evaluate_classes", "view_probabilities", "evaluations",
]

SINGLE_CROP = "single_crop"
FLIP_TTA = "flip_tta"  # the mean of the face's and its mirror image's probabilities


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % (``z`` 1.96) Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.inference_mode()
def predict_scores(
    model: FERNet, dataset: FaceDataset, size: int | None = None, batch_size: int = 256, mirrored: bool = False,
    progress: bool = False,
) -> Tensor:
    """Class scores (N, classes), temperature applied, of the faces or of their mirror images."""
    model.eval()
    size = size or model.config.input_size
    device = next(model.parameters()).device
    outputs = []
    batches = range(0, len(dataset), batch_size)
    for start in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        x = gray_batch_to_tensor(dataset.images[start : start + batch_size], size).to(device)
        outputs.append(model(x.flip(dims=[3]) if mirrored else x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, model.config.num_classes)


def predict_probabilities(
    model: FERNet,
    dataset: FaceDataset,
    size: int | None = None,
    batch_size: int = 256,
    flip_tta: bool = False,
    progress: bool = False,
) -> Tensor:
    """Softmax probabilities (N, classes); with ``flip_tta`` averaged with the mirrored face."""
    probabilities = predict_scores(model, dataset, size, batch_size, progress=progress).softmax(dim=1)
    if flip_tta:
        mirrored = predict_scores(model, dataset, size, batch_size, mirrored=True, progress=progress).softmax(dim=1)
        probabilities = (probabilities + mirrored) / 2
    return probabilities


@dataclass
class ClassificationReport:
    """Accuracy (with its 95 % interval), per-class recall, macro F1, confusion matrix (rows: truth)."""

    accuracy: float
    per_class_recall: dict[str, float]
    macro_f1: float
    confusion: list[list[int]]
    class_names: tuple[str, ...]
    count: int
    accuracy_interval: tuple[float, float] = (0.0, 1.0)
    per_class_recall_interval: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_interval_95": list(self.accuracy_interval),
            "per_class_recall": self.per_class_recall,
            "per_class_recall_interval_95": {name: list(bounds) for name, bounds in self.per_class_recall_interval.items()},
            "macro_f1": self.macro_f1,
            "confusion_matrix": self.confusion,
            "class_names": list(self.class_names),
            "count": self.count,
        }


def confusion_matrix(labels: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    pairs = labels.long() * num_classes + predictions.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_report(labels: Tensor, predictions: Tensor, class_names: tuple[str, ...]) -> ClassificationReport:
    matrix = confusion_matrix(labels, predictions, len(class_names)).double()
    true_positive = matrix.diag()
    support = matrix.sum(dim=1)
    predicted = matrix.sum(dim=0)
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), torch.zeros_like(support))
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(predicted))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(denominator))
    present = support > 0
    correct, total = int(true_positive.sum()), int(matrix.sum())
    return ClassificationReport(
        accuracy=correct / max(total, 1),
        per_class_recall={name: float(r) for name, r, p in zip(class_names, recall, present) if p},
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        confusion=matrix.long().tolist(),
        class_names=class_names,
        count=total,
        accuracy_interval=wilson_interval(correct, total),
        per_class_recall_interval={
            name: wilson_interval(int(hit), int(n)) for name, hit, n, p in zip(class_names, true_positive, support, present) if p
        },
    )


def restricted_predictions(probabilities: Tensor, allowed: Tensor) -> Tensor:
    """Argmax over the ``allowed`` classes only (a bool mask over the columns)."""
    return probabilities.masked_fill(~allowed.to(probabilities.device), float("-inf")).argmax(dim=1)


@dataclass
class Evaluation:
    """A model on a dataset that may hold only some of its classes.

    ``report`` takes the prediction over all the model's classes, as a deployed
    model would answer. ``restricted`` takes it over the classes present in the
    data only (a face is never called a class the data does not have), the
    fairer figure on a dataset without, say, neutral; both are over the same
    images, and equal when every class is present.
    """

    report: ClassificationReport
    restricted: ClassificationReport
    present_classes: tuple[str, ...]
    reliability: ReliabilityBins | None = None
    ece_interval: tuple[float, float] | None = None  # 95 % bootstrap interval, where it was computed

    @property
    def ece(self) -> float:
        """Expected calibration error (15 bins) of the probabilities over all the model's classes."""
        return expected_calibration_error(self.reliability) if self.reliability is not None else float("nan")

    def to_dict(self) -> dict[str, Any]:
        restricted = self.restricted.to_dict()
        del restricted["class_names"], restricted["count"]
        calibration = {"ece": self.ece, "ece_bins": ECE_BINS, "reliability": self.reliability.to_dict()} if self.reliability else {}
        if self.ece_interval is not None:
            calibration["ece_interval_95"] = list(self.ece_interval)
        return {
            **self.report.to_dict(), **calibration, "present_classes": list(self.present_classes),
            "restricted_to_present_classes": restricted,
        }


def evaluation_from_probabilities(
    labels: Tensor, probabilities: Tensor, class_names: tuple[str, ...], ece_resamples: int = 0
) -> Evaluation:
    """Both reports and the reliability bins; with ``ece_resamples`` also the ECE's bootstrap interval."""
    present = torch.bincount(labels.long(), minlength=len(class_names)) > 0
    return Evaluation(
        report=classification_report(labels, probabilities.argmax(dim=1), class_names),
        restricted=classification_report(labels, restricted_predictions(probabilities, present), class_names),
        present_classes=tuple(name for name, p in zip(class_names, present.tolist()) if p),
        reliability=reliability_bins(probabilities, labels),
        ece_interval=ece_interval(probabilities, labels, resamples=ece_resamples) if ece_resamples else None,
    )


def evaluate(
    model: FERNet, dataset: FaceDataset, size: int | None = None, flip_tta: bool = False, progress: bool = False
) -> ClassificationReport:
    """Classification report with the prediction over all the model's classes."""
    return evaluate_classes(model, dataset, size, flip_tta, progress).report


def evaluate_classes(
    model: FERNet, dataset: FaceDataset, size: int | None = None, flip_tta: bool = False, progress: bool = False
) -> Evaluation:
    """Both reports of :class:`Evaluation`; ``dataset`` is labelled with the model's classes."""
    probabilities = predict_probabilities(model, dataset, size, flip_tta=flip_tta, progress=progress)
    return evaluation_from_probabilities(dataset.labels, probabilities, dataset.class_names)


def view_probabilities(model: FERNet, dataset: FaceDataset, size: int | None = None, progress: bool = False) -> dict[str, Tensor]:
    """The probabilities of the single crop (what every strategy answers) and of flip TTA, from one pass each."""
    single = predict_scores(model, dataset, size, progress=progress).softmax(dim=1)
    mirrored = predict_scores(model, dataset, size, mirrored=True, progress=progress).softmax(dim=1)
    return {SINGLE_CROP: single, FLIP_TTA: (single + mirrored) / 2}


def evaluations(labels: Tensor, views: dict[str, Tensor], class_names: tuple[str, ...]) -> dict[str, Evaluation]:
    """:class:`Evaluation` of each view's probabilities, each with the ECE's bootstrap interval."""
    return {
        name: evaluation_from_probabilities(labels, probabilities, class_names, ECE_RESAMPLES)
        for name, probabilities in views.items()
    }
