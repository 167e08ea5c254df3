"""What a run leaves for analysis besides its JSON lines: a CSV of the same rows, a per-track summary, a plot.

Each is fed the records one by one as they come out and holds no more than it
needs, so a video of any length is processed in constant memory: the CSV is
written row by row, the summary keeps counts per track, and the plot keeps at
most :data:`PLOT_POINTS` averaged points per track (neighbouring points are
merged pairwise when a track has more).

- :class:`CsvOutput`: one row per record (one per face per frame, and one per
  frame without a face or that could not be read), the same values as the JSON
  line; the box and latency split into columns, one column per class for the
  smoothed and the raw probabilities. It reads back with the ``csv`` module or
  ``pandas.read_csv``; an empty cell is JSON's ``null``.
- :class:`Summary`: per track, the first and last time it was seen, its faces,
  its dominant expression and the share of its faces (at a constant frame
  rate, of its time) in each expression. Faces without a track (stills) form
  one row of their own.
- :class:`TimelinePlot`: expressions over time, one panel per track.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from .daemon import NO_FACE

__all__ = [
    "LATENCY_PARTS", "PLOT_POINTS", "PLOT_TRACKS", "csv_columns", "csv_row", "CsvOutput", "TrackSummary", "Summary",
    "format_summary", "TrackTimeline", "TimelinePlot", "check_plot_path", "AnalysisOutputs",
]

LATENCY_PARTS = ("head", "encode", "network", "server", "attention", "tail", "total")
PLOT_POINTS = 600  # points kept per track for the plot: finer than a panel's pixels, whatever the video's length
PLOT_TRACKS = 12  # panels at most: the tracks seen longest


# -- CSV ----------------------------------------------------------------------------------------------

_HEAD = ("source", "frame", "time_s", "track_id", "face", "box_x", "box_y", "box_width", "box_height", "label")
_TAIL = ("raw_label", "strategy", "requested_strategy", "fallback", "fallback_reason", "bytes_up", "bytes_down",
         *(f"latency_{part}_ms" for part in LATENCY_PARTS), "auto_choice", "auto_reason", "error")


def csv_columns(class_names: Sequence[str]) -> list[str]:
    """The header: where and when, the box, the label, one column per class (``prob_<class>``, then ``raw_prob_<class>``), how."""
    return [*_HEAD, *(f"prob_{c}" for c in class_names), *(f"raw_prob_{c}" for c in class_names), *_TAIL]


def csv_row(record: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """The CSV cells of one record (None where the record has no value: an empty cell)."""
    box = record.get("box") or [None] * 4
    probabilities = record.get("probabilities") or {}
    raw = record.get("raw_probabilities") or {}
    latency = record.get("latency") or {}
    auto = record.get("auto") or {}
    row: dict[str, Any] = {key: record.get(key) for key in ("source", "frame", "time_s", "track_id", "face", "label")}
    row.update(zip(("box_x", "box_y", "box_width", "box_height"), box))
    row.update({f"prob_{c}": probabilities.get(c) for c in class_names})
    row.update({f"raw_prob_{c}": raw.get(c) for c in class_names})
    row.update({key: record.get(key) for key in ("raw_label", "strategy", "requested_strategy", "fallback", "fallback_reason", "bytes_up", "bytes_down", "error")})
    row.update({f"latency_{part}_ms": latency.get(part) for part in LATENCY_PARTS})
    row.update({"auto_choice": auto.get("choice"), "auto_reason": auto.get("reason")})
    return row


class CsvOutput:
    """Writes records to a CSV file as they come, one row each (``--csv``); the file is opened, so checked, at once."""

    def __init__(self, path: Path, class_names: Sequence[str]) -> None:
        self.path = path
        self.class_names = tuple(class_names)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO = path.open("w", newline="", encoding="utf-8")
        except OSError as error:
            raise ValueError(f"cannot write the CSV {path}: {error.strerror or error}") from None
        self._writer = csv.DictWriter(self._file, fieldnames=csv_columns(self.class_names))
        self._writer.writeheader()
        self.rows = 0

    def add(self, record: dict[str, Any]) -> None:
        """Append one record's row."""
        self._writer.writerow(csv_row(record, self.class_names))
        self.rows += 1

    def close(self) -> None:
        self._file.close()


# -- summary ------------------------------------------------------------------------------------------

@dataclass
class TrackSummary:
    """One track's (or the untracked faces') time span, faces and expressions."""

    track_id: int | None
    first_s: float | None = None
    last_s: float | None = None
    faces: int = 0
    labels: Counter[str] = field(default_factory=Counter)

    def add(self, record: dict[str, Any]) -> None:
        time_s = record.get("time_s")
        if time_s is not None:
            self.first_s = time_s if self.first_s is None else min(self.first_s, time_s)
            self.last_s = time_s if self.last_s is None else max(self.last_s, time_s)
        self.faces += 1
        self.labels[record["label"]] += 1

    @property
    def dominant(self) -> str:
        """The expression of most of its faces (the first in class order on a tie)."""
        return self.labels.most_common(1)[0][0]

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        shares = {c: round(self.labels[c] / self.faces, 6) for c in class_names}
        return {"track_id": self.track_id, "first_s": self.first_s, "last_s": self.last_s, "faces": self.faces, "dominant": self.dominant, "shares": shares}


class Summary:
    """Counts per track, fed record by record (``--summary``)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        self.tracks: dict[int | None, TrackSummary] = {}
        self.frames = 0
        self.frames_without_face = 0
        self.unreadable = 0
        self._last_frame: tuple[str, int] | None = None

    def add(self, record: dict[str, Any]) -> None:
        frame = (record["source"], record["frame"])
        self.frames += frame != self._last_frame
        self._last_frame = frame
        if record.get("error") is not None:
            self.frames_without_face += record.get("face") is None
            self.unreadable += record["error"] != NO_FACE
            return
        track = record.get("track_id")
        if track not in self.tracks:
            self.tracks[track] = TrackSummary(track, labels=Counter({c: 0 for c in self.class_names}))
        self.tracks[track].add(record)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON: frames, frames without a face, unreadable inputs, then one entry per track."""
        ordered = sorted(self.tracks.values(), key=lambda t: (t.track_id is None, t.track_id or 0))
        return {
            "frames": self.frames, "frames_without_face": self.frames_without_face, "unreadable": self.unreadable,
            "tracks": [t.to_dict(self.class_names) for t in ordered],
        }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as lines of text: one per track, its expressions by share."""
    tracks = summary["tracks"]
    lines = [f"summary: {summary['frames']} frames, {len(tracks)} track{'s' * (len(tracks) != 1)}, "
             f"{summary['frames_without_face']} frames without a face, {summary['unreadable']} unreadable"]
    for track in tracks:
        name = "faces without a track" if track["track_id"] is None else f"track {track['track_id']}"
        span = "" if track["first_s"] is None else f" {track['first_s']:.2f}-{track['last_s']:.2f} s,"
        shares = ", ".join(f"{c} {100 * s:.0f} %" for c, s in sorted(track["shares"].items(), key=lambda kv: -kv[1]) if s > 0)
        lines.append(f"  {name}:{span} {track['faces']} faces, mostly {track['dominant']}: {shares}")
    return "\n".join(lines)


# -- plot ---------------------------------------------------------------------------------------------

class TrackTimeline:
    """A track's probabilities over time in at most ``points`` points: when full, neighbours merge pairwise."""

    def __init__(self, class_names: Sequence[str], points: int = PLOT_POINTS) -> None:
        if points < 2:
            raise ValueError("a timeline needs at least 2 points")
        self.class_names = tuple(class_names)
        self.points = points
        self.per_point = 1  # records averaged in each point; doubles at each merge
        self._sums: list[list[float]] = []  # per point: time, then one probability per class
        self._counts: list[int] = []
        self.faces = 0

    def add(self, time_s: float, probabilities: dict[str, float]) -> None:
        values = [time_s, *(probabilities[c] for c in self.class_names)]
        if self._counts and self._counts[-1] < self.per_point:
            self._sums[-1] = [a + b for a, b in zip(self._sums[-1], values)]
            self._counts[-1] += 1
        else:
            self._sums.append(values)
            self._counts.append(1)
        self.faces += 1
        if len(self._counts) > self.points:
            self._merge()

    def _merge(self) -> None:
        sums, counts = self._sums, self._counts
        self._sums = [[a + b for a, b in zip(*sums[i : i + 2])] if i + 1 < len(sums) else sums[i] for i in range(0, len(sums), 2)]
        self._counts = [sum(counts[i : i + 2]) for i in range(0, len(counts), 2)]
        self.per_point *= 2

    def series(self) -> tuple[list[float], dict[str, list[float]]]:
        """Times and, per class, the mean probability of each point."""
        means = [[v / n for v in point] for point, n in zip(self._sums, self._counts)]
        return [m[0] for m in means], {c: [m[1 + k] for m in means] for k, c in enumerate(self.class_names)}


def check_plot_path(path: Path) -> None:
    """Refuse, before anything runs, a plot file matplotlib cannot write (by its suffix) or a folder that cannot hold it."""
    _pyplot()  # matplotlib is there, or a clear error
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(f"cannot plot to {path.name}: give a file ending in one of {', '.join('.' + f for f in sorted(formats))}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write the plot {path}: {error.strerror or error}") from None


class TimelinePlot:
    """Expressions over time, one panel per track (``--plot``); needs records that carry a time (video)."""

    def __init__(self, path: Path, class_names: Sequence[str], points: int = PLOT_POINTS) -> None:
        check_plot_path(path)
        self.path = path
        self.class_names = tuple(class_names)
        self.points = points
        self.timelines: dict[int, TrackTimeline] = {}

    def add(self, record: dict[str, Any]) -> None:
        """Keep a tracked face's smoothed probabilities; other records (no face, no track, no time) are not plotted."""
        track, time_s = record.get("track_id"), record.get("time_s")
        if record.get("error") is not None or track is None or time_s is None:
            return
        if track not in self.timelines:
            self.timelines[track] = TrackTimeline(self.class_names, self.points)
        self.timelines[track].add(time_s, record["probabilities"])

    def write(self, title: str = "") -> int:
        """Draw the figure (the :data:`PLOT_TRACKS` tracks with most faces, in id order); returns the panels drawn."""
        plt = _pyplot()
        shown = sorted(sorted(self.timelines, key=lambda t: -self.timelines[t].faces)[:PLOT_TRACKS])
        fig, axes = plt.subplots(max(len(shown), 1), 1, figsize=(9, 1.4 + 1.9 * max(len(shown), 1)), sharex=True, squeeze=False)
        colours = _class_colours(self.class_names)
        for ax, track in zip(axes[:, 0], shown):
            times, series = self.timelines[track].series()
            for name in self.class_names:
                ax.plot(times, series[name], color=colours[name], linewidth=1.4, label=name)
            ax.set_ylim(0, 1)
            ax.set_ylabel(f"track {track}\nprobability")
            ax.grid(alpha=0.3)
        if not shown:
            axes[0, 0].text(0.5, 0.5, "no tracked face", ha="center", va="center", transform=axes[0, 0].transAxes)
        axes[-1, 0].set_xlabel("time in the video (s)")
        handles = [plt.Line2D([], [], color=colours[name], linewidth=2) for name in self.class_names]
        fig.legend(handles, self.class_names, loc="lower center", ncol=len(self.class_names), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
        hidden = len(self.timelines) - len(shown)
        fig.suptitle(title + (f" ({hidden} tracks with fewer faces not shown)" if hidden else ""), fontsize=10)
        fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
        fig.savefig(self.path, dpi=110)
        plt.close(fig)
        return len(shown)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend; a clear error where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(f"--plot needs matplotlib (pip install matplotlib): {error}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _class_colours(class_names: Iterable[str]) -> dict[str, Any]:
    """One fixed colour per class (tab10), the same in every panel."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {name: palette(k % 10) for k, name in enumerate(class_names)}


class AnalysisOutputs:
    """The analysis outputs one run asked for (CSV, summary, plot), fed together record by record."""

    def __init__(self, class_names: Sequence[str], csv_path: Path | None = None, summary: bool = False, plot_path: Path | None = None) -> None:
        self.plot = TimelinePlot(plot_path, class_names) if plot_path else None  # checked first: it writes nothing yet
        self.csv = CsvOutput(csv_path, class_names) if csv_path else None
        self.summary = Summary(class_names) if summary else None

    def add(self, record: dict[str, Any]) -> None:
        for output in (self.csv, self.summary, self.plot):
            if output is not None:
                output.add(record)

    def close(self, title: str = "") -> dict[str, Any] | None:
        """Close the CSV, draw the plot; returns the summary (as JSON) when one was asked for."""
        if self.csv is not None:
            self.csv.close()
        if self.plot is not None:
            self.plot.write(title)
        return self.summary.to_dict() if self.summary is not None else None
