"""Where frames come from: an image file, a folder of images, a video file, a camera, a stream URL.

Every input item yields exactly one :class:`Frame`; an unreadable image yields
a frame carrying the error instead of being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "SourceError", "Frame", "Source", "read_image", "open_source"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


class SourceError(ValueError):
    """A source that cannot be opened at all."""


@dataclass
class Frame:
    source: str
    index: int
    image: np.ndarray | None  # BGR uint8, None when unreadable
    error: str | None = None


@dataclass
class Source:
    """An opened source: its frames, whether it is a video stream, and its length if known."""

    description: str
    frames: Iterator[Frame]
    is_video: bool
    length: int | None
    fps: float | None = None


def read_image(path: Path) -> Frame:
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.empty(0, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        return Frame(str(path), 0, None, f"cannot decode {path} as an image")
    return Frame(str(path), 0, image)


def _folder_frames(files: list[Path]) -> Iterator[Frame]:
    for path in files:
        yield read_image(path)


def _capture_frames(capture: cv2.VideoCapture, name: str, max_frames: int | None) -> Iterator[Frame]:
    index = 0
    try:
        while max_frames is None or index < max_frames:
            ok, image = capture.read()
            if not ok:
                break
            yield Frame(name, index, image)
            index += 1
    finally:
        capture.release()


def open_source(spec: str, max_frames: int | None = None) -> Source:
    """Open ``spec``: a camera index (``0``), a URL (``rtsp://…``), a folder, a video or an image file."""
    if spec.isdigit() or "://" in spec:
        capture = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        if not capture.isOpened():
            raise SourceError(f"cannot open {'camera' if spec.isdigit() else 'stream'} {spec}")
        fps = capture.get(cv2.CAP_PROP_FPS) or None
        return Source(spec, _capture_frames(capture, spec, max_frames), True, max_frames, fps)
    path = Path(spec)
    if path.is_dir():
        # Recursively, so a dataset laid out as class subfolders is walked; each record names its file.
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path} or its subfolders")
        return Source(spec, _folder_frames(files[:max_frames]), False, len(files[:max_frames]))
    if not path.exists():
        raise SourceError(f"no such file, folder, camera or URL: {spec}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise SourceError(f"cannot open video {path}")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        length = min(count, max_frames) if count and max_frames else count or max_frames
        return Source(spec, _capture_frames(capture, str(path), max_frames), True, length, capture.get(cv2.CAP_PROP_FPS) or None)
    return Source(spec, iter([read_image(path)]), False, 1)
