"""Face finding (MediaPipe's BlazeFace where LiteRT is installed, else OpenCV's Haar cascade) and tracking in video.

:func:`make_detector` picks the detector: ``auto`` (the default of ``fer-edge
run``) takes BlazeFace where ``ai-edge-litert`` is installed, as the runtime
takes ONNX Runtime where it is installed, since BlazeFace is the faster of the
two with fewer false faces (docs/faces.md), and Haar where it is not, so that a
base install still finds faces.

Stills get one-shot detection. In video a face is reported only once it has
been seen in ``confirm_frames`` consecutive frames (each frame waits that many
frames minus one, so a confirmed face is reported from its first frame on: see
:class:`ConfirmationWindow`), its box is smoothed, and it
keeps its ``track_id`` while it stays, even across a few frames in which the
detector misses it (it is not reported in those frames: holding boxes through
misses was measured to hold false boxes too). Settings were measured with
``fer-bench faces``; see docs/faces.md.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Generic, Iterator, TypeVar

import cv2
import numpy as np

from shared_model.preprocessing import to_gray

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
T = TypeVar("T")


@dataclass(frozen=True)
class HaarSettings:
    """``detectMultiScale`` settings; ``min_size_fraction`` is of the shorter image side."""

    scale_factor: float = 1.1
    min_neighbors: int = 12  # 5 (OpenCV's example value) boxed the sample's space shuttle: docs/faces.md
    min_size: int = 40
    min_size_fraction: float = 0.0


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    def to_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]

    @property
    def area(self) -> int:
        return self.width * self.height

    def iou(self, other: "Box") -> float:
        """Intersection over union of two boxes (0 when apart)."""
        w = min(self.x + self.width, other.x + other.width) - max(self.x, other.x)
        h = min(self.y + self.height, other.y + other.height) - max(self.y, other.y)
        inter = max(w, 0) * max(h, 0)
        union = self.area + other.area - inter
        return inter / union if union else 0.0


class FaceDetector:
    """Frontal faces, largest first; ``whole_image`` treats every image as one pre-cropped face."""

    def __init__(self, whole_image: bool = False, cascade: str | Path | None = None, min_size: int = 40, settings: HaarSettings | None = None) -> None:
        self.whole_image = whole_image
        self.settings = settings or HaarSettings(min_size=min_size)
        self._cascade = None
        if not whole_image:
            path = Path(cascade) if cascade else Path(cv2.data.haarcascades) / DEFAULT_CASCADE
            self._cascade = cv2.CascadeClassifier(str(path))
            if self._cascade.empty():
                raise FileNotFoundError(f"cannot load the Haar cascade {path} (opencv-python 5 no longer ships them: keep it below 5)")

    def detect(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        if self.whole_image:
            return [Box(0, 0, width, height)]
        gray = cv2.equalizeHist(to_gray(image))
        s = self.settings
        side = max(s.min_size, int(s.min_size_fraction * min(height, width)))
        found = self._cascade.detectMultiScale(gray, scaleFactor=s.scale_factor, minNeighbors=s.min_neighbors, minSize=(side, side))
        boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
        return sorted(boxes, key=lambda b: b.width * b.height, reverse=True)

    @staticmethod
    def crop(image: np.ndarray, box: Box) -> np.ndarray:
        return image[box.y : box.y + box.height, box.x : box.x + box.width]


@dataclass
class Track:
    """One face followed across frames: its smoothed box and how often it was seen or missed."""

    track_id: int
    box: tuple[float, float, float, float]
    hits: int = 1
    missed: int = 0
    confirmed: bool = False

    def as_box(self) -> Box:
        return Box(*(int(round(v)) for v in self.box))


@dataclass
class TrackerSettings:
    """How a face becomes, stays and stops being a reported track.

    Attributes:
        confirm_frames: consecutive frames a face must be detected in before it is reported.
        keep_frames: frames a confirmed face may go undetected and still keep its track (not reported meanwhile).
        smoothing: weight of the new detection in the exponential moving average of the box.
        min_iou: overlap needed to take a detection as the same face.
    """

    confirm_frames: int = 3
    keep_frames: int = 5
    smoothing: float = 0.5
    min_iou: float = 0.3


@dataclass
class FaceTracker:
    """Greedy IoU tracker over per-frame detections (video only)."""

    settings: TrackerSettings = field(default_factory=TrackerSettings)
    tracks: list[Track] = field(default_factory=list)
    _next_id: int = 0

    def update(self, boxes: list[Box]) -> list[Track]:
        """Feed one frame's detections; returns the tracks to report, largest first."""
        for box in self._match(boxes):
            self.tracks.append(Track(self._next_id, (box.x, box.y, box.width, box.height)))
            self._next_id += 1
        for track in self.tracks:
            track.confirmed = track.confirmed or track.hits >= self.settings.confirm_frames
        # An unconfirmed face must be seen in consecutive frames; a confirmed one keeps its track a while.
        self.tracks = [t for t in self.tracks if t.missed <= (self.settings.keep_frames if t.confirmed else 0)]
        shown = [t for t in self.tracks if t.confirmed and t.missed == 0]
        return sorted(shown, key=lambda t: t.box[2] * t.box[3], reverse=True)

    def _match(self, boxes: list[Box]) -> list[Box]:
        """Pair detections with tracks by best IoU; update paired tracks; return unpaired detections."""
        pairs = sorted(
            ((track.as_box().iou(box), t, b) for t, track in enumerate(self.tracks) for b, box in enumerate(boxes)),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for iou, t, b in pairs:
            if iou < self.settings.min_iou or t in used_tracks or b in used_boxes:
                continue
            used_tracks.add(t)
            used_boxes.add(b)
            self._follow(self.tracks[t], boxes[b])
        for t, track in enumerate(self.tracks):
            if t not in used_tracks:
                track.missed += 1
        return [box for b, box in enumerate(boxes) if b not in used_boxes]

    def _follow(self, track: Track, box: Box) -> None:
        a = self.settings.smoothing
        track.box = tuple(a * new + (1 - a) * old for new, old in zip((box.x, box.y, box.width, box.height), track.box))
        track.hits += 1
        track.missed = 0


class ConfirmationWindow(Generic[T]):
    """Delays each frame by ``confirm_frames - 1`` frames, so a face is reported from its first frame once confirmed.

    ``push(item, boxes)`` feeds one frame's detections (``item`` is whatever the
    caller wants back: the frame) and returns the frames that leave the window,
    each with its confirmed faces as ``(box, track_id)``; ``flush()`` releases the
    rest at the end of the stream. A face seen in fewer consecutive frames than
    ``confirm_frames`` is never reported; a confirmed one is reported in every
    frame it was detected in, its first ones included.
    """

    def __init__(self, tracker: FaceTracker | None = None) -> None:
        self.tracker = tracker or FaceTracker()
        self._pending: deque[tuple[T, list[tuple[Box, Track]]]] = deque()

    def push(self, item: T, boxes: list[Box]) -> list[tuple[T, list[tuple[Box, int]]]]:
        self.tracker.update(boxes)
        seen = [(t.as_box(), t) for t in self.tracker.tracks if t.missed == 0]
        self._pending.append((item, sorted(seen, key=lambda s: s[0].area, reverse=True)))
        released = []
        while len(self._pending) >= self.tracker.settings.confirm_frames:
            released.append(self._release())
        return released

    def flush(self) -> list[tuple[T, list[tuple[Box, int]]]]:
        return [self._release() for _ in range(len(self._pending))]

    def _release(self) -> tuple[T, list[tuple[Box, int]]]:
        item, seen = self._pending.popleft()
        return item, [(box, track.track_id) for box, track in seen if track.confirmed]


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null meanwhile (a failure still raises)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class BlazeFaceModel:
    """Geometry of a MediaPipe BlazeFace model: input side, anchor strides, anchors per cell, score threshold."""

    file: str
    side: int
    strides: tuple[int, ...]
    anchors_per_layer: int
    min_score: float


BLAZEFACE_MODELS = {
    "short": BlazeFaceModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    "full": BlazeFaceModel("face_detection_full_range_sparse.tflite", 192, (4,), 1, 0.6),
}


def blazeface_anchors(model: BlazeFaceModel) -> np.ndarray:
    """Anchor centres (A, 2) in [0, 1], in the model's output order (layers of one stride share a grid)."""
    centres = []
    for stride in dict.fromkeys(model.strides):
        grid = model.side // stride
        per_cell = model.anchors_per_layer * model.strides.count(stride)
        ys, xs = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


class BlazeFaceDetector:
    """MediaPipe's BlazeFace run by LiteRT (``pip install ai-edge-litert``), boxes widened to the Haar framing.

    The ``.tflite`` weights are MediaPipe's (Apache-2.0), shipped in
    ``edge_client/assets`` with their licence. ``variant``: ``short`` (128x128
    input, faces near the camera) or ``full`` (192x192, faces up to about 5 m).
    Same interface as :class:`FaceDetector`.
    """

    whole_image = False

    def __init__(self, variant: str = "short", weights_dir: str | Path | None = None, widen: float = 1.0, nms_iou: float = 0.3) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise ImportError(f"BlazeFace needs `pip install 'fer-split[blazeface]'` (ai-edge-litert): {error}") from error
        if variant not in BLAZEFACE_MODELS:
            raise ValueError(f"unknown BlazeFace variant {variant!r}; expected one of {tuple(BLAZEFACE_MODELS)}")
        self.model = BLAZEFACE_MODELS[variant]
        folder = Path(weights_dir) if weights_dir else Path(str(resources.files("edge_client") / "assets"))
        self._interpreter = Interpreter(model_path=str(folder / self.model.file), num_threads=1)
        with native_stderr_silenced():  # LiteRT logs an INFO line on stderr (its XNNPACK delegate) in every run
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: d["shape"][-1], reverse=True)
        self._boxes, self._scores = outputs[0]["index"], outputs[1]["index"]
        self.anchors = blazeface_anchors(self.model)
        self.widen = widen
        self.nms_iou = nms_iou

    def detect(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        side = max(height, width)  # letterbox: pad to a square, then scale to the model's input
        square = cv2.copyMakeBorder(image, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        rgb = cv2.cvtColor(cv2.resize(square, (self.model.side, self.model.side), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        self._interpreter.set_tensor(self._input, (rgb.astype(np.float32) / 127.5 - 1)[None])
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._boxes)[0, :, :4] / self.model.side
        scores = 1 / (1 + np.exp(-np.clip(self._interpreter.get_tensor(self._scores)[0, :, 0], -80, 80)))
        keep = scores >= self.model.min_score
        centres = (raw[keep, :2] + self.anchors[keep]) * side
        sizes = raw[keep, 2:4] * side * self.widen
        rects = [[float(x - w / 2), float(y - h / 2), float(w), float(h)] for (x, y), (w, h) in zip(centres, sizes)]
        chosen = cv2.dnn.NMSBoxes(rects, scores[keep].tolist(), self.model.min_score, self.nms_iou) if rects else []
        boxes = [self._clip(rects[i], width, height) for i in np.array(chosen).reshape(-1)]
        return sorted((b for b in boxes if b.area), key=lambda b: b.area, reverse=True)

    @staticmethod
    def _clip(rect: list[float], width: int, height: int) -> Box:
        x0, y0 = max(int(round(rect[0])), 0), max(int(round(rect[1])), 0)
        x1, y1 = min(int(round(rect[0] + rect[2])), width), min(int(round(rect[1] + rect[3])), height)
        return Box(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))

    crop = staticmethod(FaceDetector.crop)


AUTO_DETECTOR = "auto"
DETECTORS = (AUTO_DETECTOR, "haar", "blazeface", "blazeface-full")


def make_detector(name: str = AUTO_DETECTOR, whole_image: bool = False) -> FaceDetector | BlazeFaceDetector:
    """The detector ``name`` names (one of :data:`DETECTORS`); ``auto``: BlazeFace where LiteRT imports, else Haar."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; expected one of {', '.join(DETECTORS)}")
    if whole_image or name == "haar":
        return FaceDetector(whole_image)
    if name == AUTO_DETECTOR:
        try:
            return BlazeFaceDetector("short")
        except ImportError:  # the base install has no LiteRT: the cascade OpenCV ships
            return FaceDetector()
    return BlazeFaceDetector("full" if name == "blazeface-full" else "short")


__all__ = [
    "AUTO_DETECTOR", "DETECTORS", "make_detector", "Box", "FaceDetector", "BlazeFaceDetector", "FaceTracker", "ConfirmationWindow", "HaarSettings", "Track", "TrackerSettings",
    "DEFAULT_CASCADE", "BLAZEFACE_MODELS", "BlazeFaceModel", "blazeface_anchors", "native_stderr_silenced",
]
