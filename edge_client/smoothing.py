"""Steady labels in video: each track's probabilities averaged over time, exponentially.

A face between two expressions gets probabilities that move a little from one
frame to the next, and its label can change every frame though the face did
not. Each track's probabilities are therefore an exponential moving average in
video time (``time_s``) with a time constant ``tau`` in seconds: a frame ``dt``
after the previous one weighs ``1 - exp(-dt / tau)``. The weight depends on
time, not on frames, so the same ``tau`` means the same thing at any frame rate
and across frames in which the face was missed; a step from one expression to
another is halfway through after ``tau * ln 2`` seconds.

The record's ``probabilities`` and ``label`` become the smoothed ones;
``raw_probabilities`` and ``raw_label`` keep what the model said of this frame
alone. Faces without a track (stills, ``--whole-image``) or without a time are
left as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_TIME_CONSTANT_S", "FORGET_AFTER", "ProbabilitySmoother", "with_raw"]

# Short against the half second within which a real change of expression should show (a step is
# halfway after tau * ln 2), long against the frame-to-frame jitter of one frame at camera rates.
DEFAULT_TIME_CONSTANT_S = 0.3
# A track unseen this many time constants is forgotten: its weight, exp(-FORGET_AFTER), is below the
# probabilities' six decimals, so forgetting changes no output and a long video holds no dead tracks.
FORGET_AFTER = 20.0


@dataclass
class _TrackState:
    time_s: float
    probabilities: dict[str, float]


def with_raw(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``raw_label`` and ``raw_probabilities`` set to its own label and probabilities."""
    probabilities = record.get("probabilities")
    return {**record, "raw_label": record.get("label"), "raw_probabilities": dict(probabilities) if probabilities else None}


class ProbabilitySmoother:
    """Per-track exponential average of probabilities in video time; one instance per source, records in order."""

    def __init__(self, time_constant_s: float = DEFAULT_TIME_CONSTANT_S) -> None:
        if not time_constant_s > 0:
            raise ValueError(f"the smoothing time constant must be a positive number of seconds, not {time_constant_s}")
        self.time_constant_s = time_constant_s
        self._tracks: dict[int, _TrackState] = {}

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with smoothed ``probabilities`` and ``label`` (raw ones kept); untouched without track or time."""
        record = with_raw(record) if "raw_probabilities" not in record else record
        track, now, raw = record.get("track_id"), record.get("time_s"), record.get("raw_probabilities")
        if track is None or now is None or not raw:
            return record
        self._forget_before(now)
        state = self._tracks.get(track)
        if state is None:
            smoothed = dict(raw)
        else:
            weight = 1.0 - math.exp(-max(now - state.time_s, 0.0) / self.time_constant_s)
            smoothed = {name: state.probabilities[name] + weight * (p - state.probabilities[name]) for name, p in raw.items()}
        self._tracks[track] = _TrackState(now, smoothed)
        rounded = {name: round(p, 6) for name, p in smoothed.items()}
        return {**record, "probabilities": rounded, "label": max(smoothed, key=smoothed.__getitem__)}

    @property
    def tracks(self) -> int:
        """How many tracks are remembered now."""
        return len(self._tracks)

    def _forget_before(self, now: float) -> None:
        horizon = now - FORGET_AFTER * self.time_constant_s
        for track in [t for t, state in self._tracks.items() if state.time_s < horizon]:
            del self._tracks[track]
