"""Where frames come from: an image file, a folder of images, a video file, a camera, a stream URL.

Every input item yields exactly one :class:`Frame`; an unreadable image yields
a frame carrying the error instead of being dropped, and so does a video, camera
or stream that yields no frame at all. A camera or stream whose read fails is
read again a few times (about a second) before it is given up.

Each frame says when it was taken (``time_s``): its position in a video file
(the file's timestamps, else its index over the frame rate), the seconds since
the first frame of a camera or stream, and None for a still image. Folders are
walked recursively, following symbolic links and refusing loops
(:func:`shared_model.folders.walk_files`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from shared_model.folders import FolderError, walk_files

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "SourceError", "Frame", "Source", "read_image", "open_source"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# A camera or stream whose read fails is read this many times, this far apart, before it is given up.
LIVE_READ_ATTEMPTS = 5
LIVE_READ_RETRY_S = 0.25

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """A source that cannot be opened at all."""


@dataclass
class Frame:
    """One image of a source: where it came from, its index, when it was taken, its pixels or why there are none."""

    source: str
    index: int
    image: np.ndarray | None  # BGR uint8, None when unreadable
    error: str | None = None
    time_s: float | None = None  # seconds into the video or since the first live frame; None for a still


@dataclass
class Source:
    """An opened source: its frames, whether it is a video stream, and its length if known."""

    description: str
    frames: Iterator[Frame]
    is_video: bool
    length: int | None
    fps: float | None = None


def read_image(path: Path) -> Frame:
    """The image at ``path``, or a frame carrying the error (unreadable, undecodable, too large) instead."""
    try:
        data = _read_bytes(path)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as error:
        return Frame(str(path), 0, None, f"cannot decode {path}: {_decode_problem(error)}")
    except (OSError, ValueError, MemoryError) as error:
        return Frame(str(path), 0, None, f"cannot read {path}: {_read_problem(path, error)}")
    if image is None:
        return Frame(str(path), 0, None, f"cannot decode {path} as an image" + ("" if data.size else " (empty file)"))
    return Frame(str(path), 0, image)


def _read_bytes(path: Path) -> np.ndarray:
    """The file's bytes; a FIFO, socket or device is refused before it is opened (reading one could block)."""
    if path.exists() and not path.is_file():
        raise OSError("not a regular file")
    return np.fromfile(str(path), dtype=np.uint8)


def _read_problem(path: Path, error: BaseException) -> str:
    """Why a file could not be read, in a few words."""
    if isinstance(error, MemoryError):
        return "the file is too large to read into memory"
    text = (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__
    return text + (" (a link to a missing file)" if path.is_symlink() and not path.exists() else "")


def _decode_problem(error: cv2.error) -> str:
    """Why OpenCV refused to decode an image, in a few words rather than its assertion text."""
    text = str(error)
    if "CV_IO_MAX_IMAGE" in text or "validateInputImageSize" in text:
        return "the image is too large (its header claims more pixels than OpenCV decodes)"
    return "OpenCV failed: " + (getattr(error, "err", "") or text.strip().splitlines()[-1])


def _folder_frames(files: list[Path]) -> Iterator[Frame]:
    for path in files:
        yield read_image(path)


def _capture_frames(capture: cv2.VideoCapture, name: str, max_frames: int | None, live: bool = False) -> Iterator[Frame]:
    """The frames of a video, camera or stream; one frame carrying an error when there is none at all."""
    index = 0
    clock = _LiveClock() if live else _FileClock(capture)
    try:
        while max_frames is None or index < max_frames:
            image = _read_frame(capture, name, live)
            if image is None:
                break
            yield Frame(name, index, image, time_s=clock.time_s(index))
            index += 1
    finally:
        capture.release()
    if index == 0:
        kind = "camera or stream" if live else "video"
        yield Frame(name, 0, None, f"no frame could be read from {kind} {name}" + ("" if live else " (empty or unreadable)"))
    elif live and (max_frames is None or index < max_frames):
        log.warning("%s: given up after %d frames: no frame in %d reads", name, index, LIVE_READ_ATTEMPTS)


class _FileClock:
    """Where a video file's frames sit in time: the file's timestamps while they increase, else index / frame rate."""

    def __init__(self, capture: cv2.VideoCapture) -> None:
        self.capture = capture
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        self.last: float | None = None

    def time_s(self, index: int) -> float | None:
        """The time of the frame just read (``index``), rounded to the microsecond."""
        stamp = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
        if not (stamp >= 0 and (self.last is None or stamp > self.last) and (index == 0 or stamp > 0)):
            stamp = index / self.fps if self.fps else None  # no usable timestamp: the nominal frame rate
        if stamp is not None:
            self.last = stamp
        return None if stamp is None else round(stamp, 6)


class _LiveClock:
    """Seconds since the first frame of a camera or stream, by this machine's monotonic clock."""

    def __init__(self) -> None:
        self.start: float | None = None

    def time_s(self, index: int) -> float:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        return round(now - self.start, 6)


def _read_frame(capture: cv2.VideoCapture, name: str, live: bool) -> np.ndarray | None:
    """The next frame, or None at the end; a live source's failed read is tried again, a bounded number of times."""
    attempts = LIVE_READ_ATTEMPTS if live else 1
    for attempt in range(1, attempts + 1):
        try:
            ok, image = capture.read()
        except cv2.error as error:
            log.warning("%s: reading a frame failed: %s", name, _decode_problem(error))
            ok, image = False, None
        if ok and image is not None:
            return image
        if attempt < attempts:
            log.warning("%s: no frame; read again in %.2f s (attempt %d of %d)", name, LIVE_READ_RETRY_S, attempt + 1, attempts)
            time.sleep(LIVE_READ_RETRY_S)
    return None


def open_source(spec: str, max_frames: int | None = None) -> Source:
    """Open ``spec``: a camera index (``0``), a URL (``rtsp://…``), a folder, a video or an image file."""
    if spec.isdigit() or "://" in spec:
        capture = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        if not capture.isOpened():
            raise SourceError(f"cannot open {'camera' if spec.isdigit() else 'stream'} {spec}")
        fps = capture.get(cv2.CAP_PROP_FPS) or None
        return Source(spec, _capture_frames(capture, spec, max_frames, live=True), True, max_frames, fps)
    path = Path(spec)
    if path.is_dir():
        # Recursively and through links, so a dataset laid out as (linked) class subfolders is walked; each
        # record names its file. Whatever is named like an image and is not a folder (a broken link too) gets its line.
        try:
            files = walk_files(path, IMAGE_SUFFIXES)
        except FolderError as error:
            raise SourceError(str(error)) from None
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
