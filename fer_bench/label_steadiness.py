"""``fer-bench video --mode labels``: how steady labels are, and how soon a real change shows, per time constant.

Faces from a dataset laid out as class folders (FER2013's ``public_test`` by
default, whose class names are the model's) are placed in a scene: the bundled
sample photo fitted to the frame size, the dataset face pasted over the
photo's face, the camera moving as it would in a hand (the motion of
``fer-bench faces``) and sensor noise in every frame. The pipeline runs on
those frames (detection, tracking, classification) once, unsmoothed; each
time constant's smoothing is then applied to the records exactly as ``fer-edge
run --smooth-s`` applies it (:class:`edge_client.smoothing.ProbabilitySmoother`,
in record order), while the raw labels are the records' own.

- **Steady clips**: one face between two expressions (its top two
  probabilities on the still scene at most ``margin`` apart) for the whole
  clip. Measured: label changes per second of video, raw and smoothed.
- **Change clips**: a face the model labels as its folder's class with
  confidence, then, from mid-clip, another such face of another class in the
  same place. Measured: the delay from the change until the label first shows
  the new class, and until it shows it for good.

Everything is in video time (``time_s``), so the figures do not depend on the
machine's speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from edge_client.daemon import classify_faces, find_faces, run_source
from edge_client.faces import Box, make_detector
from edge_client.runner import EdgeRunner
from edge_client.smoothing import ProbabilitySmoother
from edge_client.sources import Frame, Source
from shared_model.folders import walk_files
from shared_model.runtimes import load_backend

from .video import DEFAULT_SIZE, sample_scene

__all__ = [
    "DEFAULT_FACES", "LabelSettings", "ClipResult", "place_face", "clip_frames", "label_changes", "change_delays",
    "run_label_benchmark", "summarize_labels", "format_label_table",
]

DEFAULT_FACES = Path("../shared/data/fer2013/public_test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")


@dataclass
class LabelSettings:
    """The clips (how many, how long, at what frame rate and size) and the time constants compared."""

    faces: Path = DEFAULT_FACES
    time_constants: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    clips: int = 10  # steady clips, and as many change clips
    seconds: float = 6.0  # each clip; a change clip changes face at half of it
    fps: float = 30.0
    size: tuple[int, int] = DEFAULT_SIZE
    detector: str = "auto"
    margin: float = 0.15  # a steady clip's face: its top two probabilities at most this far apart
    confidence: float = 0.6  # a change clip's faces: labelled as their class with at least this probability
    noise: float = 3.0  # standard deviation of the sensor noise added to every frame, in grey levels
    threads: int = 1


@dataclass
class ClipResult:
    """One clip at one time constant (0: the raw labels)."""

    kind: str  # "steady" or "change"
    faces: str  # the dataset file(s) shown, before and after the change
    time_constant_s: float
    seconds: float  # of video, from the main track's first record to its last
    records: int  # of the main track (the one with most faces)
    tracks: int
    changes: int
    changes_per_s: float
    delay_s: float | None = None  # change clips: until the new class first shows (None: never)
    settled_s: float | None = None  # change clips: until it shows for good (None: never)


def place_face(scene: np.ndarray, box: Box, face: np.ndarray) -> np.ndarray:
    """``scene`` with the grey ``face`` scaled into ``box``, over the face that was there."""
    out = scene.copy()
    patch = cv2.resize(face, (box.width, box.height), interpolation=cv2.INTER_CUBIC)
    out[box.y : box.y + box.height, box.x : box.x + box.width] = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
    return out


def clip_frames(scenes: Sequence[np.ndarray], box: Box, settings: LabelSettings, seed: int) -> Iterator[Frame]:
    """A clip's frames: the ``scenes`` in equal consecutive parts under one camera motion, with sensor noise."""
    from .faces import ClipMotion, make_clip

    total = max(int(round(settings.seconds * settings.fps)), 2)
    motion = ClipMotion("hand-held", zoom=0.1, rotation=4.0, shift=0.02, brightness=0.1, frames=total)
    noise = np.random.default_rng(seed)
    for part, scene in enumerate(scenes):
        first, end = part * total // len(scenes), (part + 1) * total // len(scenes)
        moving = make_clip(scene, box, motion).frames[first:end]  # the same motion for every scene: one camera
        for offset, image in enumerate(moving):
            noisy = np.clip(image + noise.normal(0, settings.noise, image.shape), 0, 255).astype(np.uint8)
            yield Frame("clip", first + offset, noisy, time_s=round((first + offset) / settings.fps, 6))


def label_changes(labels: Sequence[str]) -> int:
    """How often the label differs from the one before."""
    return sum(a != b for a, b in zip(labels, labels[1:]))


def change_delays(times: Sequence[float], labels: Sequence[str], change_s: float, target: str) -> tuple[float | None, float | None]:
    """Seconds from ``change_s`` until ``target`` first shows, and until it shows in every later record (None: never)."""
    after = [(t, label) for t, label in zip(times, labels) if t >= change_s]
    first = next((t for t, label in after if label == target), None)
    last_other = max((k for k, (_, label) in enumerate(after) if label != target), default=-1)
    settled = after[last_other + 1][0] if last_other + 1 < len(after) else None
    return (None if first is None else round(first - change_s, 6)), (None if settled is None else round(settled - change_s, 6))


class _Pipeline:
    """The edge pipeline of ``fer-edge run`` (detector, edge runner), for stills and clips."""

    def __init__(self, settings: LabelSettings) -> None:
        self.detector = make_detector(settings.detector)
        self.runner = EdgeRunner(load_backend("auto", None, None, settings.threads))
        self.class_names = tuple(self.runner.class_names)

    def still(self, image: np.ndarray) -> dict[str, Any] | None:
        """The record of the largest face of a still, or None when no face is found."""
        frame = Frame("still", 0, image)
        records = classify_faces(frame, find_faces(image, self.detector), self.runner)
        return records[0] if records[0]["error"] is None else None

    def clip(self, frames: Iterator[Frame], length: int, fps: float) -> list[dict[str, Any]]:
        """Every record of a clip, unsmoothed (the raw labels), in order."""
        source = Source("clip", frames, True, length, fps)
        return list(run_source(source, self.detector, self.runner, smoothing_s=None))

    def close(self) -> None:
        self.runner.close()


def _dataset_faces(folder: Path, class_names: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """(class, file) of the dataset, the classes taking turns, each class's files in name order."""
    if not folder.is_dir():
        raise ValueError(f"no face folder {folder} (class folders of face images, e.g. FER2013's public_test)")
    classes = [c for c in class_names if (folder / c).is_dir()]
    if len(classes) < 2:
        raise ValueError(f"{folder} needs class folders named as the model's classes ({', '.join(class_names)}), at least two")
    files = {c: iter(walk_files(folder / c, IMAGE_SUFFIXES)) for c in classes}
    while files:
        for name in list(files):
            path = next(files[name], None)
            if path is None:
                del files[name]
            else:
                yield name, path


def _choose_faces(pipeline: _Pipeline, settings: LabelSettings, scene: np.ndarray, box: Box) -> tuple[list[tuple[Path, np.ndarray]], list[tuple[str, Path, np.ndarray]]]:
    """Faces for steady clips (between two expressions) and for change clips (confidently their own class); a face may serve both."""
    steady: list[tuple[Path, np.ndarray]] = []
    confident: list[tuple[str, Path, np.ndarray]] = []
    for name, path in _dataset_faces(settings.faces, pipeline.class_names):
        if len(steady) >= settings.clips and len(confident) >= 2 * settings.clips:
            break
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        placed = place_face(scene, box, face) if face is not None else None
        record = pipeline.still(placed) if placed is not None else None
        if record is None:
            continue
        top, second = sorted(record["probabilities"].values())[-1:-3:-1]
        if len(steady) < settings.clips and top - second <= settings.margin:
            steady.append((path, placed))
        if record["label"] == name and top >= settings.confidence and len(confident) < 2 * settings.clips:
            opens_a_pair = len(confident) % 2 == 0
            if opens_a_pair or confident[-1][0] != name:  # a pair's two faces are of two classes
                confident.append((name, path, placed))
    return steady, confident


def _main_track(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The records of the track with most faces, and how many tracks there were."""
    faces = [r for r in records if r["error"] is None and r["track_id"] is not None]
    tracks: dict[int, int] = {}
    for r in faces:
        tracks[r["track_id"]] = tracks.get(r["track_id"], 0) + 1
    if not tracks:
        return [], 0
    main = max(tracks, key=tracks.__getitem__)
    return [r for r in faces if r["track_id"] == main], len(tracks)


def _results(kind: str, names: str, records: list[dict[str, Any]], settings: LabelSettings, change: tuple[float, str] | None) -> list[ClipResult]:
    """The clip's figures raw (time constant 0) and at each time constant."""
    rows = []
    for tau in (0.0, *settings.time_constants):
        track, tracks = _main_track(_smoothed(records, tau))
        labels = [r["raw_label"] if tau == 0 else r["label"] for r in track]
        times = [r["time_s"] for r in track]
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        changes = label_changes(labels)
        delay = change_delays(times, labels, *change) if change else (None, None)
        rows.append(ClipResult(kind, names, tau, round(span, 3), len(track), tracks, changes, round(changes / span, 4) if span else 0.0, *delay))
    return rows


def _smoothed(records: list[dict[str, Any]], tau: float) -> list[dict[str, Any]]:
    """The records as ``run_source`` would give them with ``smoothing_s=tau`` (0: as they are)."""
    if tau == 0:
        return records
    smooth = ProbabilitySmoother(tau)
    return [smooth(r) for r in records]


def run_label_benchmark(settings: LabelSettings, progress: bool = True) -> list[ClipResult]:
    """Every steady and change clip at every time constant (0 first: the raw labels)."""
    from tqdm import tqdm

    scene, box = sample_scene(settings.size)
    pipeline = _Pipeline(settings)
    try:
        steady, confident = _choose_faces(pipeline, settings, scene, box)
        if not steady or len(confident) < 2:
            raise ValueError(f"too few usable faces in {settings.faces}: {len(steady)} between two expressions, {len(confident)} confident")
        length = max(int(round(settings.seconds * settings.fps)), 2)
        change_s = round((length // 2) / settings.fps, 6)
        pairs = [(confident[k], confident[k + 1]) for k in range(0, len(confident) - 1, 2)]
        rows: list[ClipResult] = []
        bar = tqdm(total=len(steady) + len(pairs), desc="clips", unit="clip", disable=not progress)
        for seed, (path, placed) in enumerate(steady):
            records = pipeline.clip(clip_frames([placed], box, settings, seed), length, settings.fps)
            rows += _results("steady", path.name, records, settings, None)
            bar.update(1)
        for seed, ((_, before, first), (name, after, second)) in enumerate(pairs, start=len(steady)):
            records = pipeline.clip(clip_frames([first, second], box, settings, seed), length, settings.fps)
            rows += _results("change", f"{before.name} -> {after.name} ({name})", records, settings, (change_s, name))
            bar.update(1)
        bar.close()
        return rows
    finally:
        pipeline.close()


def summarize_labels(rows: Sequence[ClipResult]) -> list[dict[str, Any]]:
    """Per time constant: label changes per second over all steady clips (and the cut against raw), and the
    median and worst delays of the change clips; a change that never showed makes the worst (and, if it is
    half of them, the median) null, and is counted in ``never_shown``."""
    out = []
    raw_rate = _rate([r for r in rows if r.kind == "steady" and r.time_constant_s == 0])
    for tau in sorted({r.time_constant_s for r in rows}):
        steady = [r for r in rows if r.kind == "steady" and r.time_constant_s == tau]
        change = [r for r in rows if r.kind == "change" and r.time_constant_s == tau]
        rate = _rate(steady)
        out.append({
            "time_constant_s": tau, "steady_clips": len(steady), "changes_per_s": round(rate, 4),
            "cut_vs_raw": round(raw_rate / rate, 2) if rate else None,
            "change_clips": len(change), "never_shown": sum(r.delay_s is None for r in change),
            **_spread("delay", [r.delay_s for r in change]), **_spread("settled", [r.settled_s for r in change]),
            "tracks_max": max((r.tracks for r in steady + change), default=0),
        })
    return out


def _spread(name: str, values: list[float | None]) -> dict[str, float | None]:
    """Median and maximum of ``values``, None standing for never (so a max, or a median it reaches, is None)."""
    if not values:
        return {f"{name}_median_s": None, f"{name}_max_s": None}
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    median = None if None in middle else round(sum(middle) / len(middle), 6)  # type: ignore[arg-type]
    return {f"{name}_median_s": median, f"{name}_max_s": ordered[-1]}


def _rate(rows: Sequence[ClipResult]) -> float:
    """Label changes per second over all of ``rows`` together."""
    seconds = sum(r.seconds for r in rows)
    return sum(r.changes for r in rows) / seconds if seconds else 0.0


def format_label_table(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a table; the raw labels first, then each time constant."""
    lines = [f"{'tau s':>6} {'changes/s':>10} {'cut':>6} {'delay med':>10} {'delay max':>10} {'settled med':>12} {'settled max':>12} {'never':>6} {'tracks':>7}"]
    for row in summary:
        cut = "-" if row["cut_vs_raw"] is None else f"{row['cut_vs_raw']:.1f}x"
        delays = [_seconds(row[key], row["change_clips"]) for key in ("delay_median_s", "delay_max_s", "settled_median_s", "settled_max_s")]
        lines.append(
            f"{'raw' if row['time_constant_s'] == 0 else row['time_constant_s']:>6} {row['changes_per_s']:>10.3f} {cut:>6} {delays[0]:>10} "
            f"{delays[1]:>10} {delays[2]:>12} {delays[3]:>12} {row['never_shown']:>6} {row['tracks_max']:>7}"
        )
    return "\n".join(lines)


def _seconds(value: float | None, clips: int) -> str:
    return "-" if not clips else "never" if value is None else f"{value:.3f}"
