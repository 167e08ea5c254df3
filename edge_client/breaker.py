"""Circuit breaker: stop calling a failing cloud, probe its health before trying again."""

from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class _Probe:
    """One health probe running on a thread of its own, so that no caller waits longer than the breaker allows."""

    def __init__(self, probe: Callable[[], bool]) -> None:
        self.done = threading.Event()
        self.healthy = False
        self.abandoned = False  # the caller stopped waiting; the probe thread clears the breaker's flag itself
        self._probe = probe

    def run(self, on_abandoned_end: Callable[[], None]) -> None:
        try:
            self.healthy = bool(self._probe())
        except Exception:  # a probe that raises says "not healthy", it must not kill anything
            self.healthy = False
        self.done.set()
        on_abandoned_end()


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures.

    While open, calls are answered locally. After ``reset_timeout_s`` one caller
    runs ``probe`` (the gRPC health check), outside the breaker's lock and for
    at most ``probe_timeout_s`` (a probe that takes longer counts as unhealthy);
    meanwhile every other caller is answered locally at once. If the cloud is
    healthy the circuit is half-open: one trial request at a time goes through
    (a trial whose outcome is never recorded frees its slot after
    ``trial_timeout_s``), and its outcome closes or reopens the circuit.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        probe: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        probe_timeout_s: float = 0.25,
        trial_timeout_s: float = 30.0,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.probe = probe or (lambda: True)
        self.clock = clock
        self.probe_timeout_s = probe_timeout_s
        self.trial_timeout_s = trial_timeout_s
        self.state = CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None
        self._probing: _Probe | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May the next request go to the cloud? Never blocks longer than ``probe_timeout_s``."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN:
                return self._admit_trial()
            if self._probing is not None or self.clock() - self._opened_at < self.reset_timeout_s:
                return False
            probe = self._probing = _Probe(self.probe)
        healthy = self._wait_for(probe)
        with self._lock:
            if probe.done.is_set():
                self._probing = None
            else:
                probe.abandoned = True  # the probe thread clears self._probing when it ends
            if self.state != OPEN:
                return False  # someone recorded an outcome meanwhile; let the next call decide
            if not healthy:
                self._opened_at = self.clock()
                return False
            self.state = HALF_OPEN
            return self._admit_trial()

    def _admit_trial(self) -> bool:
        now = self.clock()
        if self._trial_started is not None and now - self._trial_started < self.trial_timeout_s:
            return False
        self._trial_started = now
        return True

    def _wait_for(self, probe: _Probe) -> bool:
        threading.Thread(target=probe.run, args=(lambda: self._probe_ended(probe),), name="breaker-probe", daemon=True).start()
        return probe.done.wait(self.probe_timeout_s) and probe.healthy

    def _probe_ended(self, probe: _Probe) -> None:
        with self._lock:
            if probe.abandoned and self._probing is probe:
                self._probing = None

    def record_success(self) -> None:
        """A cloud call produced a usable answer: close the circuit."""
        with self._lock:
            self.state = CLOSED
            self.failures = 0
            self._trial_started = None

    def record_failure(self) -> None:
        """A cloud call failed (error, timeout or unusable answer): count it; a failed trial reopens at once."""
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
                self.state = OPEN
                self._opened_at = self.clock()
                self._trial_started = None
