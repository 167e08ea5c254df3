"""Frames per second on a video, per strategy, with one frame or several in flight.

The whole edge pipeline runs (``edge_client.daemon.run_source``: decode, detect,
track, classify) in an edge worker process under a device profile, against a
``fer-cloud`` behind a shaper. At each link (unthrottled, or a rate in KB/s) the
combinations of strategy and frames in flight take turns clip by clip, in a new
random order each round (this host's speed drifts), so that every combination
meets the same link and CPU; each point reports the median frames per second
over the rounds and its spread.

The clip is made from the bundled sample photo (the camera motion of
``fer-bench faces``) unless ``--video`` names one.
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

from .network import KB, PROFILES, SHAPERS, STRATEGIES, EdgeProcess
from .shaping import LinkSpec

__all__ = ["VideoSettings", "VideoRecord", "run_video_benchmark", "format_video_table", "plot_video", "sample_clip"]

UNTHROTTLED = "unthrottled"


@dataclass
class VideoSettings:
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


@dataclass
class VideoRecord:
    profile: str
    shaper: str
    link: str
    strategy: str
    in_flight: int
    rounds: int
    fps_median: float
    fps_min: float
    fps_max: float
    faces: int
    fallbacks: int
    answered_by: str


def sample_clip(folder: Path, frames: int = 90) -> Path:
    """An MJPG clip of the bundled sample photo under a hand-held camera's motion, written to ``folder``."""
    from edge_client.faces import FaceDetector
    from edge_client.samples import sample_image

    from .faces import ClipMotion, make_clip

    image = cv2.imread(str(sample_image()))
    clip = make_clip(image, FaceDetector().detect(image)[0], ClipMotion("zoom30-rot8", frames=frames))
    path = folder / "sample_clip.avi"
    height, width = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
    for frame in clip.frames:
        writer.write(frame)
    writer.release()
    return path


def _link_spec(link: str) -> LinkSpec | None:
    return None if link == UNTHROTTLED else LinkSpec(float(link) * KB)


def _combinations(settings: VideoSettings) -> list[tuple[str, int]]:
    return [(strategy, n) for strategy in settings.strategies for n in settings.in_flight]


def _runs(settings: VideoSettings, video: Path, progress: bool) -> Iterator[tuple[str, str, int, dict]]:
    """(link, strategy, in flight, worker result) for every clip run, combinations in random order per round."""
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
                    for strategy, in_flight in order.sample(combinations, len(combinations)):
                        result = edge.ask({
                            "op": "video", "target": cloud.target, "strategy": asdict(STRATEGIES[strategy]), "path": str(video),
                            "in_flight": in_flight, "skip": settings.skip, "timeout_ms": settings.timeout_ms,
                        })
                        yield link, strategy, in_flight, result  # type: ignore[misc]
                        bar.update(1)
    finally:
        bar.close()
        edge.close()


def run_video_benchmark(settings: VideoSettings, progress: bool = True) -> tuple[list[VideoRecord], list[dict]]:
    """One record per (link, strategy, frames in flight): median frames per second over the rounds; and every
    face of every clip run (link, strategy, frames in flight, run, when it came out, its latency parts, who
    answered it and, for auto, what it chose and why), the figures behind a frame rate."""
    faces: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        video = settings.video or sample_clip(Path(tmp), settings.frames)
        results: dict[tuple[str, str, int], list[dict]] = {}
        for run, (link, strategy, in_flight, result) in enumerate(_runs(settings, video, progress)):
            results.setdefault((link, strategy, in_flight), []).append(result)
            faces.extend({"link": link, "name": strategy, "in_flight": in_flight, "run": run, **face} for face in result.pop("face_records", []))
    records = []
    for (link, strategy, in_flight), runs in results.items():
        fps = [r["fps"] for r in runs]
        answered: dict[str, int] = {}
        for r in runs:
            for name, count in r["strategies"].items():
                answered[name] = answered.get(name, 0) + count
        records.append(VideoRecord(
            settings.profile, settings.shaper, link, strategy, in_flight, len(runs), round(statistics.median(fps), 2), round(min(fps), 2),
            round(max(fps), 2), sum(r["faces"] for r in runs), sum(r["fallbacks"] for r in runs),
            " ".join(f"{k}:{v}" for k, v in sorted(answered.items())),
        ))
    order = {link: i for i, link in enumerate(settings.links)}
    return sorted(records, key=lambda r: (order[r.link], settings.strategies.index(r.strategy), r.in_flight)), faces


def format_video_table(records: list[VideoRecord]) -> str:
    lines = [f"{'link':>12} {'strategy':>11} {'in flight':>9} {'fps':>7} {'min':>7} {'max':>7} {'x vs 1':>7} {'faces':>6} {'fallbacks':>9}  answered by"]
    single = {(r.link, r.strategy): r.fps_median for r in records if r.in_flight == 1}
    for r in records:
        base = single.get((r.link, r.strategy))
        ratio = f"{r.fps_median / base:.2f}" if base else "-"
        link = r.link if r.link == UNTHROTTLED else f"{r.link} KB/s"
        lines.append(f"{link:>12} {r.strategy:>11} {r.in_flight:>9} {r.fps_median:>7.1f} {r.fps_min:>7.1f} {r.fps_max:>7.1f} {ratio:>7} {r.faces:>6} {r.fallbacks:>9}  {r.answered_by}")
    return "\n".join(lines)


def plot_video(records: list[VideoRecord], path: Path) -> None:
    """Grouped bars: frames per second of each strategy at each link, one bar per frames-in-flight setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(r.link for r in records))
    strategies = list(dict.fromkeys(r.strategy for r in records))
    depths = sorted({r.in_flight for r in records})
    fig, axes = plt.subplots(1, len(links), figsize=(5 * len(links), 4), squeeze=False, sharey=True)
    width = 0.8 / len(depths)
    for ax, link in zip(axes[0], links):
        for k, depth in enumerate(depths):
            values = [next((r.fps_median for r in records if r.link == link and r.strategy == s and r.in_flight == depth), 0.0) for s in strategies]
            ax.bar([i + k * width for i in range(len(strategies))], values, width, label=f"{depth} in flight")
        ax.set_xticks([i + width * (len(depths) - 1) / 2 for i in range(len(strategies))], strategies, rotation=20)
        ax.set_title(link if link == UNTHROTTLED else f"{link} KB/s")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("frames per second (median)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
