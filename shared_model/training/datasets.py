"""Face expression datasets, decoded once into memory as uint8 grayscale.

Two sources: FER2013's original CSV (``emotion,pixels,Usage``) and image folders
(``root/<class>/*.jpg``), the common Kaggle layout of FER2013 and the layout of
RaFD, SFEW, CK+ or JAFFE exports. FER2013 folder names are mapped to the
dataset's label codes explicitly: alphabetical order would swap neutral and sad.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..config import FER2013_CLASSES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
FER2013_USAGES = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}
FER2013_SIDE = 48


class DatasetError(ValueError):
    """Data that cannot be read as a face dataset; the message says where and why."""


@dataclass
class FaceDataset:
    """Decoded faces: ``images`` uint8 (N, S, S), ``labels`` int64 (N,), ``class_names``."""

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    sources: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def subset(self, indices: Sequence[int] | Tensor) -> "FaceDataset":
        index = torch.as_tensor(indices, dtype=torch.long)
        return FaceDataset(self.images[index], self.labels[index], self.class_names, [self.sources[i] for i in index.tolist()])


def folder_class_names(root: Path) -> tuple[str, ...]:
    """Class order for a folder dataset: FER2013's codes when the names are FER2013's, else sorted."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{root} has no class subfolders (expected {root}/<class>/*.jpg)")
    if set(names) == set(FER2013_CLASSES):
        return FER2013_CLASSES
    return tuple(names)


def decode_face(path: Path, side: int) -> np.ndarray | None:
    """Grayscale uint8 (side, side) from any image file; None when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        return None
    if image.shape != (side, side):
        shrinking = image.shape[0] > side or image.shape[1] > side
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image


def load_image_folder(
    root: str | Path,
    class_names: Sequence[str] | None = None,
    side: int = FER2013_SIDE,
    limit_per_class: int | None = None,
    progress: bool = True,
) -> FaceDataset:
    """Read ``root/<class>/<image>``; unreadable files are skipped and reported, never silently."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no dataset folder at {root}")
    names = tuple(class_names) if class_names else folder_class_names(root)
    files: list[tuple[Path, int]] = []
    for code, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"class folder {folder} is missing (classes: {', '.join(names)})")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files.extend((p, code) for p in found[:limit_per_class])
    images, labels, sources, unreadable = [], [], [], []
    for path, code in tqdm(files, desc=f"decode {root.name}", unit="img", disable=not progress, leave=False):
        face = decode_face(path, side)
        if face is None:
            unreadable.append(str(path))
            continue
        images.append(face)
        labels.append(code)
        sources.append(str(path))
    if unreadable:
        log.warning("skipped %d unreadable images, e.g. %s", len(unreadable), unreadable[:3])
    if not images:
        raise DatasetError(f"no readable images under {root}")
    return FaceDataset(torch.from_numpy(np.stack(images)), torch.tensor(labels), names, sources)


def load_fer2013_csv(path: str | Path, split: str = "train", progress: bool = True) -> FaceDataset:
    """Rows of FER2013's ``fer2013.csv`` for one split (train, public_test, private_test)."""
    path = Path(path)
    if split not in FER2013_USAGES:
        raise DatasetError(f"unknown split {split!r}; expected one of {sorted(FER2013_USAGES)}")
    usage = FER2013_USAGES[split]
    images, labels, sources = [], [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path} lacks FER2013 columns {sorted(missing)}")
        for row_number, row in enumerate(tqdm(reader, desc=f"read {path.name}", unit="row", disable=not progress, leave=False), start=2):
            if row["Usage"] != usage:
                continue
            images.append(_parse_pixels(row["pixels"], path, row_number))
            labels.append(_parse_label(row["emotion"], path, row_number))
            sources.append(f"{path}:{row_number}")
    if not images:
        raise DatasetError(f"{path} has no rows with Usage={usage}")
    return FaceDataset(torch.from_numpy(np.stack(images)), torch.tensor(labels), FER2013_CLASSES, sources)


def _parse_pixels(text: str, path: Path, row: int) -> np.ndarray:
    values = np.array(text.split(), dtype=np.int64)
    if values.size != FER2013_SIDE * FER2013_SIDE or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise DatasetError(f"{path}:{row}: expected {FER2013_SIDE * FER2013_SIDE} pixel values in 0..255, got {values.size}")
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


def _parse_label(text: str, path: Path, row: int) -> int:
    if not text.strip().isdigit() or int(text) >= len(FER2013_CLASSES):
        raise DatasetError(f"{path}:{row}: emotion must be 0..{len(FER2013_CLASSES) - 1}, got {text!r}")
    return int(text)


def load_dataset(
    data: str | Path, split: str | None = None, class_names: Sequence[str] | None = None, progress: bool = True
) -> FaceDataset:
    """A FER2013 CSV (``split`` picks the Usage) or an image folder (``split`` picks a subfolder if given)."""
    data = Path(data)
    if data.is_file():
        return load_fer2013_csv(data, split or "train", progress)
    if split and (data / split).is_dir():
        data = data / split
    return load_image_folder(data, class_names, progress=progress)
