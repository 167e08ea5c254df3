"""Knowledge distillation from trained teachers' soft labels (Hinton et al., 2015).

The teachers' class probabilities are computed once per training face, before
training, rather than on every augmented batch: a teacher runs at its own input
size (224 for the shipped network), where it costs several student steps per
batch, while the augmentations change neither a face's identity nor its
expression (random erasing may hide part of it: the price of labelling once).
Each face's probabilities are those of the mean of its and its mirror image's
raw class scores (before the teacher's calibration temperature, so that the
distillation temperature is the only one), divided by the distillation
temperature; several teachers give the mean of their probabilities.

A run keeps the soft labels in its folder, keyed by the teachers' fingerprints,
the temperature and the faces, so that a resumed run reuses them and never
trains on soft labels of other teachers or other faces.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import model_fingerprint
from ..network import FERNet
from .datasets import FaceDataset
from .evaluation import predict_scores

__all__ = [
    "SOFT_LABELS_FILE", "distillation_loss", "teacher_probabilities", "check_teachers", "faces_digest", "soft_labels_for",
]

SOFT_LABELS_FILE = "soft_labels.pt"


def distillation_loss(logits: Tensor, soft_labels: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(soft_labels || softmax(logits / T))``, mean over the batch.

    The factor ``T**2`` keeps the gradient's scale independent of ``T``, so the
    weight between this term and the hard-label loss means the same at any
    temperature.
    """
    log_student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_student, soft_labels, reduction="batchmean") * temperature**2


def teacher_probabilities(
    teachers: Sequence[FERNet], dataset: FaceDataset, temperature: float, progress: bool = False
) -> Tensor:
    """(N, classes): the mean over ``teachers`` of each face's softened, mirror-averaged probabilities."""
    check_teachers(teachers, dataset.class_names)
    total = torch.zeros(len(dataset), len(dataset.class_names))
    for teacher in teachers:
        calibration = teacher.config.temperature  # predict_scores divides by it: multiplied back
        scores = predict_scores(teacher, dataset, progress=progress) * calibration
        mirrored = predict_scores(teacher, dataset, mirrored=True, progress=progress) * calibration
        total += ((scores + mirrored) / 2 / temperature).softmax(dim=1)
    return total / len(teachers)


def check_teachers(teachers: Sequence[FERNet], class_names: Sequence[str]) -> None:
    """Refuse no teacher, or a teacher whose classes are not the data's (in the same order)."""
    if not teachers:
        raise ValueError("distillation needs at least one teacher")
    for teacher in teachers:
        if tuple(teacher.config.class_names) != tuple(class_names):
            raise ValueError(f"a teacher's classes {teacher.config.class_names} are not the data's {tuple(class_names)}")


def faces_digest(dataset: FaceDataset) -> str:
    """A digest of the faces and their labels, in order: soft labels belong to exactly these."""
    digest = hashlib.sha256()
    digest.update(dataset.images.contiguous().numpy().tobytes())
    digest.update(dataset.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def soft_labels_for(
    teachers: Sequence[FERNet], dataset: FaceDataset, temperature: float, out_dir: Path, progress: bool = True
) -> FaceDataset:
    """``dataset`` with the teachers' soft labels, read from ``out_dir`` when they were computed for it before.

    The teachers are taken in the order of their fingerprints: their mean does
    not depend on the order they were given in, and neither does the key.
    """
    teachers = sorted(teachers, key=model_fingerprint)
    key = {
        "teachers": [model_fingerprint(teacher) for teacher in teachers],
        "temperature": float(temperature),
        "faces": faces_digest(dataset),
    }
    path = Path(out_dir) / SOFT_LABELS_FILE
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return dataset.with_soft_labels(saved["probabilities"])
    probabilities = teacher_probabilities(teachers, dataset, temperature, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save({"key": key, "probabilities": probabilities}, temporary)
    temporary.replace(path)
    return dataset.with_soft_labels(probabilities)
