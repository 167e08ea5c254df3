"""``fer-bench video --mode long``: a long video in constant memory, with nothing dropped.

A video of ``--minutes`` minutes (30 by default) is made from the bundled
sample photo (the scene and camera motion of ``fer-bench video``, one motion
cycle repeated; the face smiles, then frowns, its mouth turned upside down, in
:data:`SEGMENTS` equal parts, so that the plot of expressions over time shows
changes at any length) and processed by ``fer-edge run`` itself, as a user runs it,
with every analysis output on (``--json --csv --summary --plot``). While it
runs, its resident memory (``VmRSS`` of the process, read from ``/proc``) and
the frames done so far are sampled every ``--sample-s`` seconds. The report:
frames per second, resident memory after the warm-up (the first tenth of the
frames) and at the end, its growth and range, and whether every frame gave
its record (one per face per frame, a CSV row for each).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2

from .video import DEFAULT_SIZE, frown, sample_scene

__all__ = ["CYCLE_FRAMES", "SEGMENTS", "LongVideoSettings", "MemorySample", "write_long_video", "resident_mb", "run_long_video", "memory_report", "format_long_report", "plot_long_video"]

CYCLE_FRAMES = 90  # one motion cycle of the camera, repeated for the whole video
SEGMENTS = 8  # parts of the video, smile and frown in turn
WARM_UP_FRACTION = 0.1  # memory before this share of the frames is done is the start-up's, not the steady state's


@dataclass
class LongVideoSettings:
    """The long-video run: the video made (or given), and how ``fer-edge run`` processes it."""

    minutes: float = 30.0
    size: tuple[int, int] = DEFAULT_SIZE
    fps: float = 30.0
    sample_s: float = 5.0
    detector: str = "auto"
    video: Path | None = None  # a video to process instead of the generated one
    edge_options: tuple[str, ...] = field(default_factory=tuple)  # more fer-edge run options (e.g. --threads 2)


@dataclass
class MemorySample:
    """One sample: seconds since the start, frames done, resident memory of fer-edge in MB."""

    t_s: float
    frames: int
    rss_mb: float


def write_long_video(path: Path, minutes: float, size: tuple[int, int] = DEFAULT_SIZE, fps: float = 30.0, progress: bool = True) -> int:
    """Write ``minutes`` of the sample scene under camera motion to ``path`` (MPEG-4 Part 2), the face smiling
    and frowning in turn in :data:`SEGMENTS` equal parts; returns its frames."""
    from tqdm import tqdm

    from .faces import ClipMotion, make_clip

    image, face = sample_scene(size)
    motion = ClipMotion("long", zoom=0.2, rotation=6.0, shift=0.03, brightness=0.15, frames=CYCLE_FRAMES)
    cycles = [make_clip(scene, face, motion).frames for scene in (image, frown(image, face))]
    total = max(int(round(minutes * 60 * fps)), 1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write the video {path} (mp4v)")
    try:
        for index in tqdm(range(total), desc=f"writing a {minutes:g}-minute video", unit="frame", disable=not progress, file=sys.stderr):
            writer.write(cycles[index * SEGMENTS // total % 2][index % CYCLE_FRAMES])
    finally:
        writer.release()
    return total


def resident_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (``VmRSS``); None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _RecordCounter:
    """Reads fer-edge's JSON lines as they come: frames, faces, frames without a face, unreadable inputs, the summary."""

    def __init__(self, stream: IO[str]) -> None:
        self.frames = self.faces = self.no_face = self.unreadable = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.summary: dict[str, Any] | None = None
        self._last_frame: int | None = None
        self._thread = threading.Thread(target=self._read, args=(stream,), name="fer-edge-records", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            record = json.loads(line)
            if "summary" in record:
                self.summary = record["summary"]
                continue
            self.last_at = time.monotonic()
            self.first_at = self.first_at or self.last_at
            if record["frame"] != self._last_frame:
                self.frames += 1
                self._last_frame = record["frame"]
            if record["error"] is None:
                self.faces += 1
            elif record["face"] is None and record["error"] == "no face found":
                self.no_face += 1
            else:
                self.unreadable += 1

    def join(self) -> None:
        self._thread.join()


def run_long_video(settings: LongVideoSettings, out: Path, progress: bool = True) -> tuple[list[MemorySample], dict[str, Any]]:
    """Process the long video with ``fer-edge run``, sampling its memory; the samples and the report."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        video = settings.video or Path(tmp) / "long.mp4"
        expected = _frame_count(video) if settings.video else write_long_video(video, settings.minutes, settings.size, settings.fps, progress)
        csv_path = Path(tmp) / "records.csv"
        command = [
            sys.executable, "-m", "edge_client.cli", "run", str(video), "--json", "--no-progress", "--detector", settings.detector,
            "--csv", str(csv_path), "--summary", "--plot", str(out / "long_video_expressions.png"), *settings.edge_options,
        ]
        samples, counter, code, started = _run_sampled(command, settings.sample_s, expected, progress)
        csv_rows = _data_rows(csv_path)
    report = memory_report(samples, expected)
    seconds = (counter.last_at - counter.first_at) if counter.first_at and counter.last_at else float("nan")
    report.update({
        "exit_code": code, "frames_expected": expected, "frames": counter.frames, "faces": counter.faces,
        "frames_without_face": counter.no_face, "unreadable": counter.unreadable, "csv_rows": csv_rows,
        "records": counter.faces + counter.no_face + counter.unreadable, "fps": round((counter.frames - 1) / seconds, 2) if seconds > 0 else None,
        "wall_s": round(time.monotonic() - started, 1), "tracks": len((counter.summary or {}).get("tracks", [])), "command": " ".join(command[2:]),
    })
    report["nothing_dropped"] = counter.frames == expected and csv_rows == report["records"] and code == 0
    return samples, report


def _run_sampled(command: list[str], sample_s: float, expected: int, progress: bool) -> tuple[list[MemorySample], _RecordCounter, int, float]:
    from tqdm import tqdm

    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    counter = _RecordCounter(process.stdout)  # type: ignore[arg-type]
    samples: list[MemorySample] = []
    bar = tqdm(total=expected, desc="fer-edge run", unit="frame", disable=not progress, file=sys.stderr)
    try:
        while process.poll() is None:
            rss = resident_mb(process.pid)
            if rss is not None:
                samples.append(MemorySample(round(time.monotonic() - started, 2), counter.frames, round(rss, 2)))
            bar.update(counter.frames - bar.n)
            time.sleep(sample_s)
    finally:
        if process.poll() is None:  # interrupted: stop the child this function started
            process.terminate()
        code = process.wait()
        counter.join()
        bar.close()
    return samples, counter, code, started


def memory_report(samples: list[MemorySample], frames: int) -> dict[str, Any]:
    """Resident memory after the warm-up: the median of the first and of the last tenth of the samples, the
    growth from one to the other, and the range (max - min) over all of them, in MB and in % of the first."""
    steady = [s.rss_mb for s in samples if s.frames >= WARM_UP_FRACTION * frames] or [s.rss_mb for s in samples]
    if not steady:
        return {"samples": 0}
    tenth = max(len(steady) // 10, 1)
    start, end = statistics.median(steady[:tenth]), statistics.median(steady[-tenth:])
    return {
        "samples": len(samples), "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1), "rss_max_mb": round(max(steady), 1),
        "rss_growth_pct": round(100 * (end / start - 1), 2), "rss_range_pct": round(100 * (max(steady) - min(steady)) / start, 2),
    }


def _frame_count(video: Path) -> int:
    capture = cv2.VideoCapture(str(video))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def _data_rows(path: Path) -> int:
    """Rows of a CSV file below its header (0 when it was not written)."""
    import csv

    if not path.exists():
        return 0
    with path.open(newline="", encoding="utf-8") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def format_long_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    return "\n".join([
        f"{report['frames']} of {report['frames_expected']} frames, {report['faces']} faces, {report['frames_without_face']} frames without a face, "
        f"{report['unreadable']} unreadable; CSV rows {report['csv_rows']} for {report['records']} records; nothing dropped: {report['nothing_dropped']}",
        f"throughput {report['fps']} frames/s ({report['wall_s']} s in all, exit code {report['exit_code']})",
        f"resident memory after the warm-up: {report.get('rss_start_mb')} MB -> {report.get('rss_end_mb')} MB "
        f"(growth {report.get('rss_growth_pct')} %, range {report.get('rss_range_pct')} %, max {report.get('rss_max_mb')} MB; {report['samples']} samples)",
    ])


def plot_long_video(samples: list[MemorySample], path: Path) -> None:
    """Resident memory and frames per second (between samples) against the frames done."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory, rate) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    memory.plot([s.frames for s in samples], [s.rss_mb for s in samples], color="tab:blue")
    memory.set_ylabel("resident memory (MB)")
    memory.set_ylim(bottom=0)
    pairs = list(zip(samples, samples[1:]))
    rate.plot([b.frames for _, b in pairs], [(b.frames - a.frames) / (b.t_s - a.t_s) if b.t_s > a.t_s else 0 for a, b in pairs], color="tab:green")
    rate.set_ylabel("frames per second")
    rate.set_xlabel("frames done")
    for axis in (memory, rate):
        axis.grid(alpha=0.3)
    fig.suptitle("fer-edge run on a long video: memory and throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
