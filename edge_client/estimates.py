"""The estimates auto's planner keeps from the edge's own work: averages, medians, the link, its round trip.

- :class:`Ewma`: an exponentially weighted average that decays per face, not per sample.
- :class:`RecentMedian`: the median of recent samples, for a cost that is steady apart from stalls.
- :class:`LinkEstimate`: the link's round trip and cost per byte; :func:`link_changed` says when
  one call's network time shows that the link changed.
- :class:`RttProbe`: tiny calls in a background thread that keep the round trip current.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Callable

__all__ = [
    "Ewma", "RecentMedian", "LinkEstimate", "LINK_CHANGE_FACTOR", "LINK_CHANGE_MIN_S", "link_changed", "RTT_INTERVAL_S", "RttProbe",
]


class Ewma:
    """Exponentially weighted moving average over faces; ``None`` until the first sample.

    The weight of the past decays per face, not per sample: a sample taken after
    ``n`` faces without one (an exploration) counts as ``1 - (1 - alpha) ** n``,
    so an estimate refreshed rarely is replaced by its fresh measurement rather
    than averaged with a stale one.
    """

    # A stale estimate is mostly, not wholly, replaced: one unlucky sample (a scheduling
    # stall on a CPU-limited device) must not decide alone until the next exploration.
    MAX_WEIGHT = 0.7

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None
        self._last_face: int | None = None

    def update(self, sample: float, face: int | None = None) -> None:
        """Average in one sample, taken at face counter ``face``."""
        steps = 1 if face is None or self._last_face is None else max(1, face - self._last_face)
        self._last_face = face
        if self.value is None:
            self.value = sample
            return
        weight = min(1.0 - (1.0 - self.alpha) ** steps, max(self.alpha, self.MAX_WEIGHT))
        self.value += weight * (sample - self.value)

    def get(self, default: float = 0.0) -> float:
        """The estimate, or ``default`` before the first sample."""
        return default if self.value is None else self.value

    def reset(self, sample: float, face: int | None = None) -> None:
        """Forget the past: the estimate is this sample."""
        self.value = sample
        self._last_face = face

    @property
    def last_face(self) -> int | None:
        """The face counter of the latest sample (``None`` before one, or when updated without one)."""
        return self._last_face


class RecentMedian:
    """The median of the last ``window`` samples taken within ``max_age`` faces of the newest; ``None``
    until the first.

    For a cost that is steady apart from one-off stalls (the server's compute): one stalled sample
    moves an EWMA for the next faces and, if that sends the planner elsewhere, until the strategy is
    measured again; it does not move a median. A lasting change shows once it holds for most of the
    window. With an even count the lower middle value counts, so two samples, one stalled, give the
    other. Has the part of :class:`Ewma`'s interface the server-time estimate uses.
    """

    def __init__(self, window: int = 5, max_age: int = 100) -> None:
        self.window = window
        self.max_age = max_age
        self._samples: deque[tuple[int | None, float]] = deque(maxlen=window)

    def update(self, sample: float, face: int | None = None) -> None:
        """Keep one sample, taken at face counter ``face``."""
        self._samples.append((face, sample))

    @property
    def value(self) -> float | None:
        """The median of the recent samples, or ``None`` before the first."""
        if not self._samples:
            return None
        newest = self._samples[-1][0]
        recent = [v for f, v in self._samples if newest is None or f is None or newest - f <= self.max_age]
        return statistics.median_low(recent)

    def get(self, default: float = 0.0) -> float:
        """The estimate, or ``default`` before the first sample."""
        value = self.value
        return default if value is None else value


class LinkEstimate:
    """Round-trip time and cost per byte of the link to the cloud.

    One cost per byte for both directions: a remote call gives one network time
    for its bytes up and down together, and every strategy sends far more up
    than it receives, so the two directions cannot be told apart from its calls.
    """

    def __init__(self, alpha: float = 0.5, rtt_window: int = 5) -> None:
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self.s_per_byte = Ewma(alpha)

    @property
    def rtt_s(self) -> float:
        """Least of the recent tiny-call round trips: queueing behind our own uploads only inflates a sample."""
        return min(self._rtts) if self._rtts else 0.0

    def add_rtt(self, seconds: float) -> None:
        """One tiny call's round trip."""
        self._rtts.append(seconds)

    def add_transfer(self, network_s: float, bytes_up: int, bytes_down: int, face: int | None = None) -> None:
        """One exchange: its time beyond the RTT, per byte sent either way."""
        total = bytes_up + bytes_down
        if total > 0:
            self.s_per_byte.update(max(network_s - self.rtt_s, 0.0) / total, face)

    def reset_transfer(self, network_s: float, bytes_up: int, bytes_down: int, face: int | None = None) -> None:
        """One exchange that replaces the cost per byte (the link changed)."""
        total = bytes_up + bytes_down
        if total > 0:
            self.s_per_byte.reset(max(network_s - self.rtt_s, 0.0) / total, face)

    def transfer_s(self, bytes_up: float, bytes_down: float) -> float:
        """Predicted seconds for an exchange of these many bytes."""
        return self.rtt_s + (bytes_up + bytes_down) * self.s_per_byte.get()

    def throughput_bytes_per_s(self) -> float | None:
        """Bytes per second the link carries, once measured."""
        spb = self.s_per_byte.value
        return None if spb is None or spb <= 0 else 1.0 / spb


# A strategy's network time this many times what was predicted for it, or this fraction of it, and at
# least LINK_CHANGE_MIN_S away from it: the link changed (a queue or a scheduling stall rarely doubles it).
LINK_CHANGE_FACTOR = 2.0
LINK_CHANGE_MIN_S = 0.005  # beyond what a CPU quota's period can stall a call


def link_changed(estimate_s: float, sample_s: float, factor: float = LINK_CHANGE_FACTOR) -> bool:
    """Does one network time differ from its strategy's estimate enough to say the link changed?"""
    if abs(sample_s - estimate_s) < LINK_CHANGE_MIN_S:
        return False
    return sample_s >= factor * estimate_s or sample_s * factor <= estimate_s


RTT_INTERVAL_S = 2.0  # seconds between the probe's tiny calls


class RttProbe:
    """Measures the round trip with tiny calls (``ServerLive``) every ``interval_s`` in a daemon thread."""

    def __init__(self, ping: Callable[[], float | None], on_sample: Callable[[float], None], interval_s: float = RTT_INTERVAL_S) -> None:
        self._ping = ping
        self._on_sample = on_sample
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtt-probe", daemon=True)

    def start(self) -> "RttProbe":
        """Start the background calls."""
        self._thread.start()
        return self

    def sample_now(self) -> None:
        """One call now, on the caller's thread."""
        seconds = self._ping()
        if seconds is not None:
            self._on_sample(seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_now()

    def stop(self) -> None:
        """Stop the background calls (the one in flight finishes)."""
        self._stop.set()
