"""The edge pipeline: frames -> faces -> one classification per face -> records (and annotated video)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from shared_model.preprocessing import prepare_face

from .faces import Box, FaceDetector
from .runner import EdgeRunner
from .sources import Frame, Source


@dataclass
class Annotation:
    box: Box
    text: str
    fallback: bool


def face_records(frame: Frame, detector: FaceDetector, runner: EdgeRunner) -> tuple[list[dict[str, Any]], list[Annotation]]:
    """One record per face in the frame; one record with an error when the frame is unreadable or faceless."""
    base = {"source": frame.source, "frame": frame.index}
    if frame.image is None:
        return [{**base, "face": None, "box": None, "label": None, "error": frame.error}], []
    boxes = detector.detect(frame.image)
    if not boxes:
        return [{**base, "face": None, "box": None, "label": None, "error": "no face found"}], []
    records, annotations = [], []
    for number, box in enumerate(boxes):
        pixels = prepare_face(FaceDetector.crop(frame.image, box), runner.config.input_size)
        result = runner.classify(pixels)
        records.append({**base, "face": number, "box": box.to_list(), **result.to_dict(), "error": None})
        confidence = result.probabilities[result.label]
        annotations.append(Annotation(box, f"{result.label} {confidence:.2f} [{result.strategy}]", result.fallback))
    return records, annotations


def annotate(image: np.ndarray, annotations: list[Annotation]) -> np.ndarray:
    out = image.copy()
    for a in annotations:
        colour = (0, 165, 255) if a.fallback else (0, 200, 0)
        b = a.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.width, b.y + b.height), colour, 2)
        cv2.putText(out, a.text, (b.x, max(b.y - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return out


class AnnotatedWriter:
    """Writes annotated frames: a video (mp4/avi) for video sources, an image otherwise."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path = path
        self.fps = fps or 25.0
        self._video: cv2.VideoWriter | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        if self.path.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"}:
            cv2.imwrite(str(self.path), image)
            return
        if self._video is None:
            height, width = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() in {".mp4", ".m4v", ".mov"} else "MJPG"))
            self._video = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
        self._video.write(image)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()


def run_source(source: Source, detector: FaceDetector, runner: EdgeRunner, writer: AnnotatedWriter | None = None) -> Iterator[dict[str, Any]]:
    """All records of a source, in order."""
    try:
        for frame in source.frames:
            records, annotations = face_records(frame, detector, runner)
            if writer is not None and frame.image is not None:
                writer.write(annotate(frame.image, annotations))
            yield from records
    finally:
        if writer is not None:
            writer.close()
