"""Face expression datasets, decoded once into memory as uint8 grayscale.

Two sources: FER2013's original CSV (``emotion,pixels,Usage``) and image folders
(``root/<class>/*.jpg``), the common Kaggle layout of FER2013 and the layout of
RaFD, SFEW, CK+ or JAFFE exports. FER2013 folder names are mapped to the
dataset's label codes explicitly: alphabetical order would swap neutral and sad.

To evaluate a model on another dataset, :func:`match_classes` pairs the
dataset's classes with the model's: the same name (case, spaces and hyphens
aside), else a word of the same synonym group (:data:`CLASS_SYNONYMS`, e.g. CK+'s
``anger`` and ``sadness``, RaFD's ``disgusted`` and ``surprised``), else what a
class map says (:func:`parse_class_map`). Dataset classes that match no model
class are left out, and so are model classes no dataset class matches; both
are reported, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..config import FER2013_CLASSES
from ..folders import FolderError, walk_files

__all__ = [
    "IMAGE_SUFFIXES", "FER2013_USAGES", "FER2013_SIDE", "DatasetError", "FaceDataset", "folder_class_names",
    "decode_face", "load_image_folder", "load_fer2013_csv", "load_dataset", "CLASS_SYNONYMS", "LEFT_OUT_BY_MAP",
    "NOT_A_MODEL_CLASS", "NO_DATASET_CLASS", "NO_IMAGES", "normalize_class_name", "parse_class_map", "ClassMatch",
    "match_classes", "relabel", "load_dataset_for_model", "copies_in",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
FER2013_USAGES = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}
FER2013_SIDE = 48


class DatasetError(ValueError):
    """Data that cannot be read as a face dataset; the message says where and why."""


@dataclass
class FaceDataset:
    """Decoded faces: ``images`` uint8 (N, S, S), ``labels`` int64 (N,), ``class_names``.

    ``soft_labels`` (N, classes), where given, are a teacher's probabilities for
    each face: what distillation trains towards besides the labels.
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    sources: list[str]
    soft_labels: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def subset(self, indices: Sequence[int] | Tensor) -> "FaceDataset":
        index = torch.as_tensor(indices, dtype=torch.long)
        soft = self.soft_labels[index] if self.soft_labels is not None else None
        return FaceDataset(self.images[index], self.labels[index], self.class_names, [self.sources[i] for i in index.tolist()], soft)

    def with_soft_labels(self, soft_labels: Tensor) -> "FaceDataset":
        """These faces with ``soft_labels`` (N, classes), checked to fit them."""
        if tuple(soft_labels.shape) != (len(self), len(self.class_names)):
            raise ValueError(f"soft labels of shape {tuple(soft_labels.shape)} do not fit {len(self)} faces "
                             f"of {len(self.class_names)} classes")
        return replace(self, soft_labels=soft_labels.float())


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


def copies_in(faces: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Which of ``faces`` (uint8 (N, S, S)) are pixel for pixel one of ``reference``'s: bool (N,).

    A validation face that is also a training face measures memory, not
    generalization: FER2013's PublicTest holds copies of Training faces.
    """
    if faces.shape[1:] != reference.shape[1:]:
        raise DatasetError(f"faces of {faces.shape[1:]} and {reference.shape[1:]} pixels cannot be copies of each other")
    seen = {face.tobytes() for face in reference}
    return np.array([face.tobytes() in seen for face in faces], dtype=bool)


def load_image_folder(
    root: str | Path,
    class_names: Sequence[str] | None = None,
    side: int = FER2013_SIDE,
    limit_per_class: int | None = None,
    progress: bool = True,
) -> FaceDataset:
    """Read ``root/<class>/<image>``; unreadable files are skipped and reported, never silently.

    Each class folder is walked recursively, following symbolic links (a class
    folder may itself be a link); a link that loops back is a :class:`DatasetError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no dataset folder at {root}")
    names = tuple(class_names) if class_names else folder_class_names(root)
    files: list[tuple[Path, int]] = []
    for code, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"class folder {folder} is missing (classes: {', '.join(names)})")
        try:
            found = walk_files(folder, IMAGE_SUFFIXES)
        except FolderError as error:
            raise DatasetError(str(error)) from None
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
    return load_image_folder(_split_folder(data, split), class_names, progress=progress)


def _split_folder(data: Path, split: str | None) -> Path:
    """``data/split`` when a split is named: never ``data`` itself, which would make validation the training data."""
    if not split:
        return data
    if not (data / split).is_dir():
        present = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        raise DatasetError(f"{data} has no {split}/ folder (it holds: {', '.join(present) or 'no folders'}); "
                           "give the split's folder as --data, or a folder holding one folder per split")
    return data / split


# Words that name the same expression in the datasets people evaluate on: the
# FER2013 names first, then the forms used by CK+ (anger, sadness), RaFD and
# KDEF (disgusted, fearful, afraid, surprised, contemptuous) and AffectNet.
# A dataset class matches a model class when both names fall in one group.
# Only word forms of one expression are grouped: RAVDESS's ``calm`` is a class
# of its own beside ``neutral``, so it is mapped only when a class map says so.
CLASS_SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"angry", "anger"}),
    frozenset({"disgust", "disgusted"}),
    frozenset({"fear", "fearful", "afraid"}),
    frozenset({"happy", "happiness"}),
    frozenset({"sad", "sadness"}),
    frozenset({"surprise", "surprised"}),
    frozenset({"neutral"}),
    frozenset({"contempt", "contemptuous"}),  # RaFD, CK+, AffectNet; not a FER2013 class
)
LEFT_OUT_BY_MAP = "left out by the class map"
NOT_A_MODEL_CLASS = "not a class of this model"
NO_DATASET_CLASS = "no class of the data maps to it"
NO_IMAGES = "its class in the data has no readable images"


def normalize_class_name(name: str) -> str:
    """``Sad``, ``sad `` and ``Sad-Face`` compare as ``sad``, ``sad``, ``sad_face``."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def parse_class_map(text: str) -> dict[str, str]:
    """A class map: ``FOLDER=CLASS[,FOLDER=CLASS...]`` or the path of a JSON object ``{"FOLDER": "CLASS"}``.

    ``FOLDER`` is a dataset class as written (a folder name, or a FER2013 name for
    the CSV); ``CLASS`` a class of the model; an empty ``CLASS`` (``calm=``, or
    ``null`` in JSON) leaves that dataset class out.
    """
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        try:
            loaded = json.loads(path.read_text())
        except OSError as error:
            raise DatasetError(f"cannot read class map {path}: {error.strerror or error}") from None
        except json.JSONDecodeError as error:
            raise DatasetError(f"class map {path} is not JSON: {error}") from None
        if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, (str, type(None))) for k, v in loaded.items()):
            raise DatasetError(f'class map {path} must be one JSON object of names, e.g. {{"anger": "angry", "calm": "neutral"}}')
        return {key.strip(): (value or "").strip() for key, value in loaded.items()}
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, equals, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key:
            raise DatasetError(f"class map entry {pair!r} is not FOLDER=CLASS (e.g. anger=angry,calm=neutral)")
        if key in mapping:
            raise DatasetError(f"class map names {key!r} twice")
        mapping[key] = value
    if not mapping:
        raise DatasetError("the class map is empty; expected FOLDER=CLASS[,FOLDER=CLASS...] or a JSON file")
    return mapping


@dataclass(frozen=True)
class ClassMatch:
    """Which dataset class stands for which model class, and what is left out on each side.

    Attributes:
        model_classes: the model's classes, in output order.
        mapping: dataset class -> model class, for the dataset classes evaluated
            (two dataset classes may map to one model class).
        left_out_dataset_classes: dataset class -> why it is not evaluated.
        left_out_model_classes: model class -> why no image has it as its truth.
    """

    model_classes: tuple[str, ...]
    mapping: dict[str, str]
    left_out_dataset_classes: dict[str, str] = field(default_factory=dict)
    left_out_model_classes: dict[str, str] = field(default_factory=dict)

    @property
    def present_classes(self) -> tuple[str, ...]:
        """Model classes that have images in the data, in model order."""
        return tuple(c for c in self.model_classes if c not in self.left_out_model_classes)

    def to_dict(self) -> dict[str, object]:
        return {
            "class_mapping": dict(self.mapping),
            "present_classes": list(self.present_classes),
            "left_out": {"dataset_classes": dict(self.left_out_dataset_classes), "model_classes": dict(self.left_out_model_classes)},
        }

    def describe(self) -> list[str]:
        """Human-readable lines: the mapping where names differ, and everything left out."""
        renamed = [f"{d} -> {m}" for d, m in self.mapping.items() if d != m]
        lines = [f"classes evaluated: {', '.join(self.present_classes)}" + (f" (data {'; '.join(renamed)})" if renamed else "")]
        for name, why in self.left_out_dataset_classes.items():
            lines.append(f"left out: data class {name!r}, {why}")
        for name, why in self.left_out_model_classes.items():
            lines.append(f"left out: model class {name!r}, {why}")
        return lines


def match_classes(
    dataset_classes: Sequence[str], model_classes: Sequence[str], class_map: Mapping[str, str] | None = None
) -> ClassMatch:
    """Pair dataset classes with model classes: class map, then same name, then same synonym group.

    Raises DatasetError when the class map names something that is not there, and
    when no dataset class matches any model class.
    """
    model_classes, class_map = tuple(model_classes), dict(class_map or {})
    unknown_keys = [k for k in class_map if k not in dataset_classes]
    if unknown_keys:
        raise DatasetError(f"the class map names {', '.join(map(repr, unknown_keys))}, not a class of the data (data classes: {', '.join(dataset_classes)})")
    unknown_values = [v for v in class_map.values() if v and v not in model_classes]
    if unknown_values:
        raise DatasetError(f"the class map maps to {', '.join(map(repr, unknown_values))}, not a class of the model (model classes: {', '.join(model_classes)})")
    by_name = {normalize_class_name(c): c for c in model_classes}
    mapping: dict[str, str] = {}
    left_out: dict[str, str] = {}
    for name in dataset_classes:
        if name in class_map:
            if class_map[name]:
                mapping[name] = class_map[name]
            else:
                left_out[name] = LEFT_OUT_BY_MAP
            continue
        key = normalize_class_name(name)
        group = next((g for g in CLASS_SYNONYMS if key in g), frozenset({key}))
        candidates = [by_name[word] for word in sorted(group | {key}) if word in by_name]
        if key in by_name:
            mapping[name] = by_name[key]
        elif len(candidates) == 1:
            mapping[name] = candidates[0]
        elif candidates:
            left_out[name] = f"matches several model classes ({', '.join(candidates)}); choose one with a class map"
        else:
            left_out[name] = NOT_A_MODEL_CLASS
    if not mapping:
        raise DatasetError(
            f"none of the data's classes ({', '.join(dataset_classes) or 'none'}) is a class of the model "
            f"({', '.join(model_classes)}) or a known synonym of one; map them with --class-map FOLDER=CLASS,... "
            "(or pick a split folder with --split)"
        )
    mapped = set(mapping.values())
    missing = {c: NO_DATASET_CLASS for c in model_classes if c not in mapped}
    return ClassMatch(model_classes, mapping, left_out, missing)


def relabel(dataset: FaceDataset, match: ClassMatch) -> tuple[FaceDataset, ClassMatch]:
    """The images of the matched classes, labelled with model class codes (``class_names`` = the model's).

    The returned match also lists as left out the model classes that ended up
    without images (a matched folder holding nothing readable).
    """
    code = {name: i for i, name in enumerate(match.model_classes)}
    lookup = torch.tensor([code.get(match.mapping.get(name, ""), -1) for name in dataset.class_names], dtype=torch.long)
    labels = lookup[dataset.labels] if len(dataset) else dataset.labels
    keep = (labels >= 0).nonzero().flatten()
    if keep.numel() == 0:
        raise DatasetError(f"no images of the matched classes ({', '.join(match.mapping)})")
    kept = FaceDataset(dataset.images[keep], labels[keep], match.model_classes, [dataset.sources[i] for i in keep.tolist()])
    counts = kept.class_counts()
    empty = {c: NO_IMAGES for c, n in zip(match.model_classes, counts) if n == 0 and c not in match.left_out_model_classes}
    if empty:
        match = ClassMatch(match.model_classes, match.mapping, match.left_out_dataset_classes, {**match.left_out_model_classes, **empty})
    return kept, match


def load_dataset_for_model(
    data: str | Path,
    split: str | None,
    model_classes: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    progress: bool = True,
) -> tuple[FaceDataset, ClassMatch]:
    """A dataset labelled with the model's classes, for evaluating that model on it.

    As :func:`load_dataset`, but the data's classes are matched with
    :func:`match_classes`; only matched folders are decoded.
    """
    data = Path(data)
    if data.is_file():
        table = load_fer2013_csv(data, split or "train", progress)
        return relabel(table, match_classes(table.class_names, model_classes, class_map))
    data = _split_folder(data, split)
    if not data.is_dir():
        raise DatasetError(f"no dataset folder at {data}")
    folders = tuple(sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not folders:
        raise DatasetError(f"{data} has no class subfolders (expected {data}/<class>/*.jpg)")
    match = match_classes(folders, model_classes, class_map)
    folder_data = load_image_folder(data, [f for f in folders if f in match.mapping], progress=progress)
    return relabel(folder_data, match)
