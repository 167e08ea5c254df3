"""Frames per second on a video, per face detector, strategy and frames in flight.

The whole edge pipeline runs (``edge_client.daemon.run_source``: decode, detect,
track, classify, smooth) in an edge worker process under a device profile, against a
``fer-cloud`` behind a shaper. At each link (unthrottled, or a rate in KB/s) the
combinations of detector, strategy and frames in flight take turns clip by clip, in a new
random order each round (this host's speed drifts), so that every combination
meets the same link and CPU; each point reports the median frames per second
over the rounds and its spread.

The clip is made from the bundled sample photo, fitted to the frame size asked
for (640x480 by default, a camera's VGA) and moved as a hand-held camera would
(the camera motion of ``fer-bench faces``), unless ``--video`` names one.
``fer-bench video --mode long`` (:mod:`fer_bench.long_video`) and ``--mode labels``
(:mod:`fer_bench.label_steadiness`) use the same scene.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge_client.faces import Box

from .network import KB, PROFILES, SHAPERS, STRATEGIES, EdgeProcess
from .shaping import LinkSpec

__all__ = ["VideoSettings", "VideoRecord", "run_video_benchmark", "format_video_table", "plot_video", "sample_clip", "sample_scene", "frown", "fit_frame", "parse_size", "DEFAULT_SIZE"]

UNTHROTTLED = "unthrottled"
DEFAULT_SIZE = (640, 480)  # width, height: VGA, the common camera frame


@dataclass
class VideoSettings:
    """What ``fer-bench video`` (frames per second) runs: links x (detectors x strategies x frames in flight)."""

    links: tuple[str, ...] = (UNTHROTTLED, "300")  # "unthrottled" or KB/s
    strategies: tuple[str, ...] = ("edge", "cloud-jpeg", "split", "split-rest", "auto")
    in_flight: tuple[int, ...] = (1, 2, 3)
    rounds: int = 3
    profile: str = "laptop"
    shaper: str = "netns"
    video: Path | None = None
    frames: int = 90
    timeout_ms: float = 2_000
    skip: int = 10  # records before the clock starts: warm-up, discovery, the tracker's confirmation
    cloud_threads: int = 1
    weights: str | None = None
    detectors: tuple[str, ...] = ("auto",)  # fer-edge run --detector: auto is the default run
    size: tuple[int, int] = DEFAULT_SIZE


@dataclass
class VideoRecord:
    """One point: a combination's median frames per second over its rounds, and how its faces were answered."""

    profile: str
    shaper: str
    link: str
    detector: str
    strategy: str
    in_flight: int
    rounds: int
    fps_median: float
    fps_min: float
    fps_max: float
    faces: int
    fallbacks: int
    answered_by: str


def parse_size(text: str) -> tuple[int, int]:
    """``640x480`` -> (640, 480); a clear error for anything else."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 64 for p in parts):
        raise ValueError(f"a frame size is WIDTHxHEIGHT with sides of at least 64 pixels, e.g. 640x480, not {text!r}")
    return int(parts[0]), int(parts[1])


def fit_frame(image: np.ndarray, size: tuple[int, int], keep: Box) -> tuple[np.ndarray, Box]:
    """``image`` cropped to the aspect of ``size`` (centred on ``keep`` where the image allows) and scaled to it; ``keep``'s box in the result."""
    height, width = image.shape[:2]
    target_w, target_h = size
    crop_w, crop_h = (width, round(width * target_h / target_w)) if width * target_h <= height * target_w else (round(height * target_w / target_h), height)
    cx, cy = keep.x + keep.width / 2, keep.y + keep.height / 2
    x0 = int(min(max(cx - crop_w / 2, 0), width - crop_w))
    y0 = int(min(max(cy - crop_h / 2, 0), height - crop_h))
    frame = cv2.resize(image[y0 : y0 + crop_h, x0 : x0 + crop_w], size, interpolation=cv2.INTER_AREA if crop_w > target_w else cv2.INTER_LINEAR)
    scale = target_w / crop_w
    return frame, Box(*(int(round(v)) for v in ((keep.x - x0) * scale, (keep.y - y0) * scale, keep.width * scale, keep.height * scale)))


def sample_scene(size: tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, Box]:
    """The bundled sample photo fitted to ``size`` around its face, and the face's (Haar) box in it."""
    from edge_client.faces import FaceDetector
    from edge_client.samples import sample_image

    image = cv2.imread(str(sample_image()))
    return fit_frame(image, size, FaceDetector().detect(image)[0])


def frown(image: np.ndarray, face: Box, top: float = 0.55) -> np.ndarray:
    """``image`` with the mouth of ``face`` turned upside down: the sample's smile becomes a frown.

    The flipped band runs from ``top`` (a share of the face's height; the default starts at the
    upper lip) to the face's bottom, across its middle 60 %.
    """
    out = image.copy()
    top, bottom = face.y + int(top * face.height), face.y + face.height - 3
    left, right = face.x + int(0.2 * face.width), face.x + int(0.8 * face.width)
    out[top:bottom, left:right] = out[top:bottom, left:right][::-1]
    return out


def sample_clip(folder: Path, frames: int = 90, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """An MJPG clip of the bundled sample photo (fitted to ``size``) under a hand-held camera's motion, written to ``folder``."""
    from .faces import ClipMotion, make_clip

    image, face = sample_scene(size)
    clip = make_clip(image, face, ClipMotion("zoom30-rot8", frames=frames))
    path = folder / "sample_clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    for frame in clip.frames:
        writer.write(frame)
    writer.release()
    return path


def _link_spec(link: str) -> LinkSpec | None:
    return None if link == UNTHROTTLED else LinkSpec(float(link) * KB)


def _combinations(settings: VideoSettings) -> list[tuple[str, str, int]]:
    return [(detector, strategy, n) for detector in settings.detectors for strategy in settings.strategies for n in settings.in_flight]


def _runs(settings: VideoSettings, video: Path, progress: bool) -> Iterator[tuple[str, tuple[str, str, int], dict]]:
    """(link, (detector, strategy, in flight), worker result) for every clip run, combinations in random order per round."""
    from tqdm import tqdm

    combinations = _combinations(settings)
    order = random.Random(0)
    edge = EdgeProcess(PROFILES[settings.profile], settings.weights)
    bar = tqdm(total=len(settings.links) * settings.rounds * len(combinations), desc="video", unit="clip", disable=not progress, file=sys.stderr)
    try:
        with SHAPERS[settings.shaper](settings.cloud_threads, settings.weights) as cloud:
            for link in settings.links:
                cloud.shape(_link_spec(link))
                for _ in range(settings.rounds):
                    for detector, strategy, in_flight in order.sample(combinations, len(combinations)):
                        result = edge.ask({
                            "op": "video", "target": cloud.target, "strategy": asdict(STRATEGIES[strategy]), "path": str(video),
                            "in_flight": in_flight, "skip": settings.skip, "timeout_ms": settings.timeout_ms, "detector": detector,
                        })
                        yield link, (detector, strategy, in_flight), result  # type: ignore[misc]
                        bar.update(1)
    finally:
        bar.close()
        edge.close()


def run_video_benchmark(settings: VideoSettings, progress: bool = True) -> tuple[list[VideoRecord], list[dict]]:
    """One record per (link, detector, strategy, frames in flight): median frames per second over the rounds; and
    every face of every clip run (link, detector, strategy, frames in flight, run, when it came out, its latency
    parts, who answered it and, for auto, what it chose and why), the figures behind a frame rate."""
    faces: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        video = settings.video or sample_clip(Path(tmp), settings.frames, settings.size)
        results: dict[tuple[str, str, str, int], list[dict]] = {}
        for run, (link, (detector, strategy, in_flight), result) in enumerate(_runs(settings, video, progress)):
            results.setdefault((link, detector, strategy, in_flight), []).append(result)
            faces.extend({"link": link, "detector": detector, "name": strategy, "in_flight": in_flight, "run": run, **face} for face in result.pop("face_records", []))
    records = []
    for (link, detector, strategy, in_flight), runs in results.items():
        fps = [r["fps"] for r in runs]
        answered: dict[str, int] = {}
        for r in runs:
            for name, count in r["strategies"].items():
                answered[name] = answered.get(name, 0) + count
        records.append(VideoRecord(
            settings.profile, settings.shaper, link, detector, strategy, in_flight, len(runs), round(statistics.median(fps), 2), round(min(fps), 2),
            round(max(fps), 2), sum(r["faces"] for r in runs), sum(r["fallbacks"] for r in runs),
            " ".join(f"{k}:{v}" for k, v in sorted(answered.items())),
        ))
    order = {link: i for i, link in enumerate(settings.links)}
    return sorted(records, key=lambda r: (order[r.link], settings.detectors.index(r.detector), settings.strategies.index(r.strategy), r.in_flight)), faces


def format_video_table(records: list[VideoRecord]) -> str:
    """The points as a table; ``x vs 1``: frames per second against one frame in flight, same detector and strategy."""
    lines = [f"{'link':>12} {'detector':>14} {'strategy':>11} {'in flight':>9} {'fps':>7} {'min':>7} {'max':>7} {'x vs 1':>7} {'faces':>6} {'fallbacks':>9}  answered by"]
    single = {(r.link, r.detector, r.strategy): r.fps_median for r in records if r.in_flight == 1}
    for r in records:
        base = single.get((r.link, r.detector, r.strategy))
        ratio = f"{r.fps_median / base:.2f}" if base else "-"
        link = r.link if r.link == UNTHROTTLED else f"{r.link} KB/s"
        lines.append(f"{link:>12} {r.detector:>14} {r.strategy:>11} {r.in_flight:>9} {r.fps_median:>7.1f} {r.fps_min:>7.1f} {r.fps_max:>7.1f} {ratio:>7} {r.faces:>6} {r.fallbacks:>9}  {r.answered_by}")
    return "\n".join(lines)


def plot_video(records: list[VideoRecord], path: Path) -> None:
    """Grouped bars: frames per second of each strategy (and detector, where several) at each link, one bar per frames in flight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(r.link for r in records))
    several = len({r.detector for r in records}) > 1
    name = (lambda r: f"{r.strategy}\n{r.detector}") if several else (lambda r: r.strategy)
    strategies = list(dict.fromkeys(name(r) for r in records))
    depths = sorted({r.in_flight for r in records})
    fig, axes = plt.subplots(1, len(links), figsize=(5 * len(links), 4), squeeze=False, sharey=True)
    width = 0.8 / len(depths)
    for ax, link in zip(axes[0], links):
        for k, depth in enumerate(depths):
            values = [next((r.fps_median for r in records if r.link == link and name(r) == s and r.in_flight == depth), 0.0) for s in strategies]
            ax.bar([i + k * width for i in range(len(strategies))], values, width, label=f"{depth} in flight")
        ax.set_xticks([i + width * (len(depths) - 1) / 2 for i in range(len(strategies))], strategies, rotation=20)
        ax.set_title(link if link == UNTHROTTLED else f"{link} KB/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("frames per second (median)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
