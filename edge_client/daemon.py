"""The edge pipeline: frames -> faces -> one classification per face -> records (and annotated video).

Every record says when its frame was taken (``time_s``: seconds into the video,
since the first live frame, or None for a still). In video, each track's
probabilities are smoothed over time (:mod:`edge_client.smoothing`); the
record keeps the raw ones (``raw_probabilities``, ``raw_label``).
"""

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
from .smoothing import DEFAULT_TIME_CONSTANT_S, ProbabilitySmoother, with_raw
from .sources import Frame, Source

__all__ = [
    "DEFAULT_IN_FLIGHT", "Annotation", "annotation_of", "text_colour", "find_faces", "face_records", "classify_faces", "annotate",
    "AnnotatedWriter", "VIDEO_CODECS", "IMAGE_OUTPUTS", "run_source", "FrameFaces", "Classified", "NO_FACE", "unreadable",
]

# Frames classified at once by default (fer-edge run --in-flight), whatever the strategy: while one frame
# is classified (here or over the network), the next is read and detected, which on a video gave more frames per
# second than one at a time for every strategy (docs/network.md, "Frames in flight").
DEFAULT_IN_FLIGHT = 2
NO_FACE = "no face found"  # the error of a record for a frame that was read but shows no face


@dataclass
class Annotation:
    """What is drawn for one face: its box, its label text, and whether a fallback answered it (another colour)."""

    box: Box
    text: str
    fallback: bool


def annotation_of(record: dict[str, Any]) -> Annotation:
    """The annotation of a face record: ``#track label confidence [strategy]`` (no ``#`` without a track)."""
    label = record["label"]
    track = "" if record.get("track_id") is None else f"#{record['track_id']} "
    text = f"{track}{label} {record['probabilities'][label]:.2f} [{record['strategy']}]"
    return Annotation(Box(*record["box"]), text, bool(record.get("fallback")))


def find_faces(image: np.ndarray, detector: FaceDetector, tracker: FaceTracker | None = None) -> list[tuple[Box, int | None]]:
    """Boxes to classify with their track ids: one-shot detection for stills (id None), tracked faces in video."""
    boxes = detector.detect(image)
    if tracker is None or detector.whole_image:
        return [(box, None) for box in boxes]
    return [(track.as_box(), track.track_id) for track in tracker.update(boxes)]


def face_records(frame: Frame, detector: FaceDetector, runner: EdgeRunner, tracker: FaceTracker | None = None) -> list[dict[str, Any]]:
    """One record per face in the frame; one record with an error when the frame is unreadable or faceless.

    With a ``tracker``, only faces already confirmed over consecutive frames are
    reported, with smoothed boxes and a ``track_id`` (``run_source`` instead
    delays video frames so that confirmed faces are reported from their first frame).
    """
    faces = find_faces(frame.image, detector, tracker) if frame.image is not None else []
    return classify_faces(frame, faces, runner)


def classify_faces(frame: Frame, faces: list[tuple[Box, int | None]], runner: EdgeRunner) -> list[dict[str, Any]]:
    """Records for the given faces of a frame (raw probabilities kept beside them); one error record when there are none."""
    base = {"source": frame.source, "frame": frame.index, "time_s": frame.time_s}
    if frame.image is None:
        return [{**base, "face": None, "track_id": None, "box": None, "label": None, "error": frame.error}]
    if not faces:
        return [{**base, "face": None, "track_id": None, "box": None, "label": None, "error": NO_FACE}]
    records = []
    for number, (box, track_id) in enumerate(faces):
        crop = FaceDetector.crop(frame.image, box)
        result = runner.classify(prepare_face(crop, runner.config.input_size), crop)
        records.append(with_raw({**base, "face": number, "track_id": track_id, "box": box.to_list(), **result.to_dict(), "error": None}))
    return records


def unreadable(record: dict[str, Any]) -> bool:
    """Does ``record`` stand for an input that could not be read (not merely one without a face)?"""
    return record.get("error") not in (None, NO_FACE)


LOCAL_COLOUR = (0, 128, 0)  # BGR: answered as asked
FALLBACK_COLOUR = (0, 140, 255)  # BGR: answered locally after a remote failure


def annotate(image: np.ndarray, annotations: list[Annotation]) -> np.ndarray:
    """A copy of ``image`` with each face's box and its label, in text on a filled band of the box's colour.

    The text scales with the frame (a fixed size is unreadable on a large frame
    and covers a small one), sits above the box where there is room, else
    inside its top, and is kept within the frame.
    """
    out = image.copy()
    height, width = out.shape[:2]
    scale = max(0.35, min(height, width) / 720)
    thickness = max(1, round(2 * scale))
    for a in annotations:
        colour = FALLBACK_COLOUR if a.fallback else LOCAL_COLOUR
        b = a.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.width, b.y + b.height), colour, thickness + 1)
        _label(out, a.text, b, colour, scale, thickness)
    return out


def _label(image: np.ndarray, text: str, box: Box, colour: tuple[int, int, int], scale: float, thickness: int) -> None:
    """Draw ``text`` on a filled band of ``colour`` at the top of ``box`` (above it where the frame has room)."""
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, text_h // 4)
    band_h = text_h + baseline + 2 * pad
    top = box.y - band_h if box.y - band_h >= 0 else box.y  # above the box, else inside its top
    left = min(max(box.x, 0), max(image.shape[1] - text_w - 2 * pad, 0))
    cv2.rectangle(image, (left, top), (left + text_w + 2 * pad, top + band_h), colour, cv2.FILLED)
    cv2.putText(image, text, (left + pad, top + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, text_colour(colour), thickness, cv2.LINE_AA)


def text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on a light fill, white on a dark one (by the fill's luma, BT.601), so the label reads on either."""
    blue, green, red = fill
    return (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 128 else (255, 255, 255)


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
    smoothing_s: float | None = DEFAULT_TIME_CONSTANT_S,
) -> Iterator[dict[str, Any]]:
    """All records of a source, in order.

    Faces in a video are tracked (a new :class:`FaceTracker` unless one is
    given): each frame waits ``confirm_frames - 1`` frames, then its confirmed
    faces are classified. Stills and ``whole_image`` get one-shot detection.

    ``smoothing_s`` is the time constant of each track's probability smoothing
    (:class:`~edge_client.smoothing.ProbabilitySmoother`); None or 0 turns it
    off. Only tracked faces of a video are smoothed; annotations show the smoothed label.

    ``in_flight`` frames are classified at once (``fer-edge run`` uses
    :data:`DEFAULT_IN_FLIGHT`; reading and detection stay on this thread, in order): while one frame's tensor is on the wire, the next
    frame's head runs. Records still come out in frame order, exactly one per
    face, and at most ``in_flight`` frames are held, so a camera is never
    buffered without bound.
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, not {in_flight}")
    if smoothing_s is not None and smoothing_s < 0:
        raise ValueError(f"smoothing_s must be a number of seconds (0 or None: off), not {smoothing_s}")
    smooth = ProbabilitySmoother(smoothing_s) if smoothing_s and source.is_video else None
    if source.is_video and not detector.whole_image:
        faces = _tracked_faces(source.frames, detector, tracker or FaceTracker())
    else:
        faces = ((frame, find_faces(frame.image, detector) if frame.image is not None else []) for frame in source.frames)
    try:
        for frame, records in _classified(faces, runner, in_flight):
            records = [smooth(r) for r in records] if smooth else records
            yield from records  # before the annotated frame: a writer that fails loses no record
            if writer is not None and frame.image is not None:
                writer.write(annotate(frame.image, [annotation_of(r) for r in records if r["error"] is None]))
    finally:
        if writer is not None:
            writer.close()


FrameFaces = tuple[Frame, list[tuple[Box, int | None]]]
Classified = list[dict[str, Any]]


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
