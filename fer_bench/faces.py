"""``fer-bench faces``: synthetic clips from a photo with a known face box, and face-detection quality.

A clip moves a still photo the way a hand-held camera would: it zooms in and
out, rotates, shifts and changes brightness, all along smooth curves, and the
known face box moves with it. Each detector setting is then scored on every
frame: false boxes (reported boxes that do not overlap the true face) per 100
frames, the share of frames in which the true face was reported, and frames
per second. Stills use one-shot detection; video runs the same detections
through :class:`edge_client.faces.FaceTracker` with several confirmation
lengths.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge_client.faces import BlazeFaceDetector, Box, ConfirmationWindow, FaceDetector, FaceTracker, HaarSettings, TrackerSettings

MATCH_IOU = 0.3  # a reported box overlapping the true face at least this much found it


@dataclass(frozen=True)
class ClipMotion:
    """Peak amplitudes of the camera motion: zoom (fraction), rotation (degrees), shift (fraction of the side), brightness (fraction)."""

    name: str
    zoom: float = 0.3
    rotation: float = 8.0
    shift: float = 0.0
    brightness: float = 0.0
    frames: int = 90


DEFAULT_MOTIONS = (
    ClipMotion("zoom30-rot8"),  # the clip of issue 14
    ClipMotion("shift-bright", zoom=0.1, rotation=4.0, shift=0.08, brightness=0.35),
    ClipMotion("all", zoom=0.3, rotation=10.0, shift=0.06, brightness=0.3, frames=120),
    ClipMotion("zoom-out", zoom=-0.4, rotation=5.0, shift=0.04, brightness=0.2),  # the face down to 56 px
)


@dataclass
class Clip:
    name: str
    frames: list[np.ndarray]
    truth: list[Box]


def make_clip(image: np.ndarray, face: Box, motion: ClipMotion) -> Clip:
    """Frames of ``image`` under ``motion``, and the true face box in each (the face's centre and size, moved)."""
    height, width = image.shape[:2]
    frames, truth = [], []
    for t in range(motion.frames):
        phase = 2 * math.pi * t / motion.frames
        scale = 1 + motion.zoom * (0.5 - 0.5 * math.cos(phase))
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), motion.rotation * math.sin(2 * phase), scale)
        matrix[:, 2] += motion.shift * np.array([width * math.sin(phase), height * math.sin(3 * phase) / 2])
        frame = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)  # no mirrored second face
        gain = 1 + motion.brightness * math.sin(1.5 * phase)
        frames.append(cv2.convertScaleAbs(frame, alpha=gain, beta=0))
        cx, cy = matrix @ np.array([face.x + face.width / 2, face.y + face.height / 2, 1.0])
        side = face.width * scale
        truth.append(Box(int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side))))
    return Clip(motion.name, frames, truth)


@dataclass
class FaceScore:
    clip: str
    detector: str
    mode: str  # "stills" or "video N=k"
    frames: int
    false_per_100: float
    found_pct: float
    fps: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score(reported: Sequence[Sequence[Box]], truth: Sequence[Box]) -> tuple[float, float]:
    """(false boxes per 100 frames, % of frames where the true face was reported)."""
    false = found = 0
    for boxes, true in zip(reported, truth):
        hits = [box.iou(true) >= MATCH_IOU for box in boxes]
        found += any(hits)
        false += len(hits) - min(sum(hits), 1)  # a second box on the same face is false too
    return 100 * false / len(truth), 100 * found / len(truth)


def track(detections: Sequence[Sequence[Box]], settings: TrackerSettings) -> list[list[Box]]:
    """The boxes the edge daemon reports for each frame of a video with these detections."""
    window: ConfirmationWindow[int] = ConfirmationWindow(FaceTracker(settings))
    released = [out for index, boxes in enumerate(detections) for out in window.push(index, list(boxes))] + window.flush()
    return [[box for box, _ in faces] for _, faces in released]


HAAR_SETTINGS: dict[str, tuple[str, HaarSettings]] = {
    "haar default 1.1/5": ("haarcascade_frontalface_default.xml", HaarSettings(1.1, 5)),
    "haar default 1.1/8": ("haarcascade_frontalface_default.xml", HaarSettings(1.1, 8)),
    "haar default 1.1/10": ("haarcascade_frontalface_default.xml", HaarSettings(1.1, 10)),
    "haar default 1.1/12": ("haarcascade_frontalface_default.xml", HaarSettings(1.1, 12)),
    "haar default 1.05/12": ("haarcascade_frontalface_default.xml", HaarSettings(1.05, 12)),
    "haar alt2 1.1/3": ("haarcascade_frontalface_alt2.xml", HaarSettings(1.1, 3)),
    "haar alt2 1.1/5": ("haarcascade_frontalface_alt2.xml", HaarSettings(1.1, 5)),
}


BLAZEFACE_SETTINGS = {"blazeface short": "short", "blazeface full": "full"}  # needs ai-edge-litert
DETECTORS = (*HAAR_SETTINGS, *BLAZEFACE_SETTINGS)


def detector_for(name: str) -> FaceDetector | BlazeFaceDetector:
    """The detector behind a setting name (see ``DETECTORS``)."""
    if name in BLAZEFACE_SETTINGS:
        return BlazeFaceDetector(BLAZEFACE_SETTINGS[name])
    cascade, settings = HAAR_SETTINGS[name]
    return FaceDetector(cascade=Path(cv2.data.haarcascades) / cascade, settings=settings)


def evaluate(clips: Sequence[Clip], detectors: Sequence[str], confirm_frames: Sequence[int], keep_frames: int = 5) -> list[FaceScore]:
    """Stills and tracked-video scores of every detector setting on every clip."""
    scores = []
    for name in detectors:
        detector = detector_for(name)
        for clip in clips:
            start = time.perf_counter()
            detections = [detector.detect(frame) for frame in clip.frames]
            fps = len(clip.frames) / (time.perf_counter() - start)
            scores.append(FaceScore(clip.name, name, "stills", len(clip.frames), *score(detections, clip.truth), fps))
            for n in confirm_frames:
                start = time.perf_counter()
                tracked = track(detections, TrackerSettings(confirm_frames=n, keep_frames=keep_frames))
                elapsed = len(clip.frames) / fps + time.perf_counter() - start
                scores.append(FaceScore(clip.name, name, f"video N={n}", len(clip.frames), *score(tracked, clip.truth), len(clip.frames) / elapsed))
    return scores


def summarize(scores: Sequence[FaceScore]) -> list[FaceScore]:
    """All clips together, per detector and mode (frame-weighted)."""
    rows = []
    for key in dict.fromkeys((s.detector, s.mode) for s in scores):
        group = [s for s in scores if (s.detector, s.mode) == key]
        frames = sum(s.frames for s in group)
        mean = lambda attr: sum(getattr(s, attr) * s.frames for s in group) / frames  # noqa: E731
        rows.append(FaceScore("all clips", *key, frames, mean("false_per_100"), mean("found_pct"), frames / sum(s.frames / s.fps for s in group)))
    return rows


def format_table(rows: Sequence[FaceScore]) -> str:
    lines = [f"{'detector':<22} {'mode':<11} {'frames':>6} {'false/100':>9} {'found %':>8} {'fps':>7}"]
    lines += [f"{r.detector:<22} {r.mode:<11} {r.frames:>6} {r.false_per_100:>9.1f} {r.found_pct:>8.1f} {r.fps:>7.1f}" for r in rows]
    return "\n".join(lines)


def plot(rows: Sequence[FaceScore], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.detector}\n{r.mode}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, max(4, 0.28 * len(rows))), sharey=True)
    axes[0].barh(labels, [r.false_per_100 for r in rows], color="tab:red")
    axes[0].axvline(1, color="k", ls="--", lw=1)
    axes[0].set_xlabel("false boxes per 100 frames (goal <= 1)")
    axes[1].barh(labels, [r.found_pct for r in rows], color="tab:green")
    axes[1].axvline(98, color="k", ls="--", lw=1)
    axes[1].set_xlim(min(90, min(r.found_pct for r in rows) - 2), 100.5)
    axes[1].set_xlabel("frames with the true face found, % (goal >= 98)")
    axes[0].invert_yaxis()
    axes[0].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_photo(path: Path | None, box: Sequence[int] | None) -> tuple[np.ndarray, Box]:
    """The photo (default: the bundled sample) and its face box (default: the Haar box of the photo itself)."""
    if path is None:
        from edge_client.samples import sample_image

        path = sample_image()
    image = cv2.imread(str(path))
    if image is None:
        raise ValueError(f"cannot read {path} as an image")
    if box is None:
        found = FaceDetector().detect(image)
        if not found:
            raise ValueError(f"no face found in {path}: give its box with --box X,Y,W,H")
        return image, found[0]
    return image, Box(*box)


__all__ = ["ClipMotion", "Clip", "FaceScore", "make_clip", "score", "evaluate", "summarize", "format_table", "plot", "load_photo", "HAAR_SETTINGS", "DETECTORS", "DEFAULT_MOTIONS", "detector_for"]
