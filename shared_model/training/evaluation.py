"""Predictions and classification metrics on a decoded face dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .datasets import FaceDataset
from ..network import FERNet
from ..preprocessing import gray_batch_to_tensor

__all__ = [
    "predict_probabilities", "ClassificationReport", "confusion_matrix", "classification_report",
    "restricted_predictions", "Evaluation", "evaluation_from_probabilities", "evaluate", "evaluate_classes",
]


@torch.inference_mode()
def predict_probabilities(
    model: FERNet,
    dataset: FaceDataset,
    size: int | None = None,
    batch_size: int = 256,
    flip_tta: bool = False,
    progress: bool = False,
) -> Tensor:
    """Softmax probabilities (N, classes); with ``flip_tta`` averaged with the mirrored face."""
    model.eval()
    size = size or model.config.input_size
    device = next(model.parameters()).device
    batches = range(0, len(dataset), batch_size)
    outputs = []
    for start in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        x = gray_batch_to_tensor(dataset.images[start : start + batch_size], size).to(device)
        probs = model(x).softmax(dim=1)
        if flip_tta:
            probs = (probs + model(x.flip(dims=[3])).softmax(dim=1)) / 2
        outputs.append(probs.cpu())
    return torch.cat(outputs)


@dataclass
class ClassificationReport:
    """Accuracy, per-class accuracy (recall), macro F1 and the confusion matrix (rows: truth)."""

    accuracy: float
    per_class_accuracy: dict[str, float]
    macro_f1: float
    confusion: list[list[int]]
    class_names: tuple[str, ...]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "per_class_accuracy": self.per_class_accuracy,
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
    return ClassificationReport(
        accuracy=float(true_positive.sum() / matrix.sum().clamp(min=1)),
        per_class_accuracy={name: float(r) for name, r, p in zip(class_names, recall, present) if p},
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        confusion=matrix.long().tolist(),
        class_names=class_names,
        count=int(matrix.sum()),
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

    def to_dict(self) -> dict[str, Any]:
        restricted = self.restricted.to_dict()
        del restricted["class_names"], restricted["count"]
        return {**self.report.to_dict(), "present_classes": list(self.present_classes), "restricted_to_present_classes": restricted}


def evaluation_from_probabilities(labels: Tensor, probabilities: Tensor, class_names: tuple[str, ...]) -> Evaluation:
    present = torch.bincount(labels.long(), minlength=len(class_names)) > 0
    return Evaluation(
        report=classification_report(labels, probabilities.argmax(dim=1), class_names),
        restricted=classification_report(labels, restricted_predictions(probabilities, present), class_names),
        present_classes=tuple(name for name, p in zip(class_names, present.tolist()) if p),
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
