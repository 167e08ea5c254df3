"""The edge pipeline: frames -> faces -> one classification per face -> records (and annotated video)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from shared_model.preprocessing import prepare_face

from .faces import Box, ConfirmationWindow, FaceDetector, FaceTracker
from .runner import EdgeRunner
from .sources import Frame, Source

__all__ = [
    "DEFAULT_IN_FLIGHT", "Annotation", "find_faces", "face_records", "classify_faces", "annotate",
    "AnnotatedWriter", "VIDEO_CODECS", "IMAGE_OUTPUTS", "run_source", "FrameFaces", "Classified", "NO_FACE", "unreadable",
]

# Frames classified at once by default (fer-edge run --in-flight), whatever the strategy: on a video,
# 2 against 1 gained 8-46 % frames per second for every strategy on the laptop profile, auto and the
# edge included, and -2 to +6 % on the phone, where detection bounds the rate (2026-12-07,
# docs/network.md, "Frames in flight").
DEFAULT_IN_FLIGHT = 2
NO_FACE = "no face found"  # the error of a record for a frame that was read but shows no face


@dataclass
class Annotation:
    box: Box
    text: str
    fallback: bool


def find_faces(image: np.ndarray, detector: FaceDetector, tracker: FaceTracker | None = None) -> list[tuple[Box, int | None]]:
    """Boxes to classify with their track ids: one-shot detection for stills (id None), tracked faces in video."""
    boxes = detector.detect(image)
    if tracker is None or detector.whole_image:
        return [(box, None) for box in boxes]
    return [(track.as_box(), track.track_id) for track in tracker.update(boxes)]


def face_records(frame: Frame, detector: FaceDetector, runner: EdgeRunner, tracker: FaceTracker | None = None) -> tuple[list[dict[str, Any]], list[Annotation]]:
    """One record per face in the frame; one record with an error when the frame is unreadable or faceless.

    With a ``tracker``, only faces already confirmed over consecutive frames are
    reported, with smoothed boxes and a ``track_id`` (``run_source`` instead
    delays video frames so that confirmed faces are reported from their first frame).
    """
    faces = find_faces(frame.image, detector, tracker) if frame.image is not None else []
    return classify_faces(frame, faces, runner)


def classify_faces(frame: Frame, faces: list[tuple[Box, int | None]], runner: EdgeRunner) -> tuple[list[dict[str, Any]], list[Annotation]]:
    """Records (and annotations) for the given faces of a frame; one error record when there are none."""
    base = {"source": frame.source, "frame": frame.index}
    if frame.image is None:
        return [{**base, "face": None, "track_id": None, "box": None, "label": None, "error": frame.error}], []
    if not faces:
        return [{**base, "face": None, "track_id": None, "box": None, "label": None, "error": NO_FACE}], []
    records, annotations = [], []
    for number, (box, track_id) in enumerate(faces):
        crop = FaceDetector.crop(frame.image, box)
        result = runner.classify(prepare_face(crop, runner.config.input_size), crop)
        records.append({**base, "face": number, "track_id": track_id, "box": box.to_list(), **result.to_dict(), "error": None})
        confidence = result.probabilities[result.label]
        annotations.append(Annotation(box, f"{result.label} {confidence:.2f} [{result.strategy}]", result.fallback))
    return records, annotations


def unreadable(record: dict[str, Any]) -> bool:
    """Does ``record`` stand for an input that could not be read (not merely one without a face)?"""
    return record.get("error") not in (None, NO_FACE)


def annotate(image: np.ndarray, annotations: list[Annotation]) -> np.ndarray:
    out = image.copy()
    for a in annotations:
        colour = (0, 165, 255) if a.fallback else (0, 200, 0)
        b = a.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.width, b.y + b.height), colour, 2)
        cv2.putText(out, a.text, (b.x, max(b.y - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return out


# What --annotate can write: a video (its codec by suffix) or, for a source of one frame, an image.
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
IMAGE_OUTPUTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class AnnotatedWriter:
    """Writes annotated frames: a video (.mp4, .m4v, .mov, .avi, .mkv), or one image (.png, .jpg, ...).

    Every frame of a video is scaled to the first frame's size (a video has one
    size). An image holds one frame: a second one is refused, not written over
    the first (:meth:`for_source` refuses an image path for a video or a folder
    of several images up front). An output that cannot be written is refused
    when the writer is made, before anything is classified (ValueError).
    """

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path = path
        self.fps = fps or 25.0
        self.is_image = path.suffix.lower() in IMAGE_OUTPUTS
        self._video: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._check_output()

    @classmethod
    def for_source(cls, path: Path, source: Source) -> "AnnotatedWriter":
        """A writer for ``source``'s frames; an image path is refused for a source of more than one frame."""
        if path.suffix.lower() in IMAGE_OUTPUTS and (source.is_video or (source.length or 0) > 1):
            what = "a video" if source.is_video else f"{source.length} images"
            raise ValueError(f"{path} is an image, which holds one frame, but {source.description} is {what}: give a video path ({', '.join(VIDEO_CODECS)})")
        return cls(path, source.fps)

    def _check_output(self) -> None:
        """Refuse a suffix nothing here writes, or a video the codecs cannot open (probed with a tiny frame size)."""
        suffixes = ", ".join([*VIDEO_CODECS, *sorted(IMAGE_OUTPUTS)])
        if self.is_image:
            if not cv2.haveImageWriter(str(self.path)):
                raise ValueError(f"cannot write images like {self.path.name}: OpenCV has no writer for {self.path.suffix}")
            return
        if self.path.suffix.lower() not in VIDEO_CODECS:
            raise ValueError(f"cannot write annotated frames to {self.path.name}: use one of {suffixes}")
        probe = self._open_video((16, 16))
        probe.release()
        self.path.unlink(missing_ok=True)

    def _open_video(self, size: tuple[int, int]) -> cv2.VideoWriter:
        video = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()]), self.fps, size)
        if not video.isOpened():
            raise ValueError(f"cannot write the video {self.path} ({self.path.suffix} with {VIDEO_CODECS[self.path.suffix.lower()]}, {size[0]}x{size[1]})")
        return video

    def write(self, image: np.ndarray) -> None:
        """Add one annotated frame (scaled to the first frame's size in a video)."""
        if self.is_image:
            if self._written:
                raise RuntimeError(f"{self.path} is an image and already holds a frame")
            if not cv2.imwrite(str(self.path), image):
                raise RuntimeError(f"could not write {self.path}")
        else:
            if self._video is None:
                self._size = (image.shape[1], image.shape[0])
                self._video = self._open_video(self._size)
            if (image.shape[1], image.shape[0]) != self._size:
                image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
            self._video.write(image)
        self._written += 1

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


def _tracked_faces(frames: Iterator[Frame], detector: FaceDetector, tracker: FaceTracker) -> Iterator[tuple[Frame, list[tuple[Box, int | None]]]]:
    """Video frames with their confirmed faces, each frame released once its faces are confirmed or rejected."""
    window: ConfirmationWindow[Frame] = ConfirmationWindow(tracker)
    for frame in frames:
        boxes = detector.detect(frame.image) if frame.image is not None else []
        yield from window.push(frame, boxes)
    yield from window.flush()


def run_source(
    source: Source,
    detector: FaceDetector,
    runner: EdgeRunner,
    writer: AnnotatedWriter | None = None,
    tracker: FaceTracker | None = None,
    in_flight: int = 1,
) -> Iterator[dict[str, Any]]:
    """All records of a source, in order.

    Faces in a video are tracked (a new :class:`FaceTracker` unless one is
    given): each frame waits ``confirm_frames - 1`` frames, then its confirmed
    faces are classified. Stills and ``whole_image`` get one-shot detection.

    ``in_flight`` frames are classified at once (``fer-edge run`` uses
    :data:`DEFAULT_IN_FLIGHT`; reading and detection stay on this thread, in order): while one frame's tensor is on the wire, the next
    frame's head runs. Records still come out in frame order, exactly one per
    face, and at most ``in_flight`` frames are held, so a camera is never
    buffered without bound.
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, not {in_flight}")
    if source.is_video and not detector.whole_image:
        faces = _tracked_faces(source.frames, detector, tracker or FaceTracker())
    else:
        faces = ((frame, find_faces(frame.image, detector) if frame.image is not None else []) for frame in source.frames)
    try:
        for frame, (records, annotations) in _classified(faces, runner, in_flight):
            yield from records  # before the annotated frame: a writer that fails loses no record
            if writer is not None and frame.image is not None:
                writer.write(annotate(frame.image, annotations))
    finally:
        if writer is not None:
            writer.close()


FrameFaces = tuple[Frame, list[tuple[Box, int | None]]]
Classified = tuple[list[dict[str, Any]], list[Annotation]]


def _classified(faces: Iterable[FrameFaces], runner: EdgeRunner, in_flight: int) -> Iterator[tuple[Frame, Classified]]:
    """Each frame with its records, in order; up to ``in_flight`` frames classified concurrently."""
    if in_flight == 1:
        for frame, found in faces:
            yield frame, classify_faces(frame, found, runner)
        return
    pending: deque[tuple[Frame, Future[Classified]]] = deque()
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="fer-frame")
    try:
        failure: Exception | None = None
        try:
            for frame, found in faces:
                if len(pending) == in_flight:
                    yield _done(pending)
                pending.append((frame, pool.submit(classify_faces, frame, found, runner)))
        except Exception as error:  # the source failed (a camera unplugged): the frames read before still come out
            failure = error
        while pending:
            yield _done(pending)
        if failure is not None:
            raise failure
    finally:
        for _, future in pending:  # the consumer stopped early (Ctrl-C, a closed pipe): drop what has not started
            future.cancel()
        pool.shutdown(wait=True)


def _done(pending: deque[tuple[Frame, Future[Classified]]]) -> tuple[Frame, Classified]:
    """The oldest frame in flight with its records, once classified."""
    frame, future = pending.popleft()
    return frame, future.result()
