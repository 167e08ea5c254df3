"""Circuit breaker: stop calling a failing cloud, probe its health before trying again."""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["CLOSED", "OPEN", "HALF_OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures.

    While open, calls are answered locally. After ``reset_timeout_s`` the next
    call starts ``probe`` (the gRPC health check) on a thread of its own and is
    itself answered locally at once: no caller ever waits for a probe. A probe
    that finds the cloud healthy makes the circuit half-open: one trial request
    at a time goes through (a trial whose outcome is never recorded frees its
    slot after ``trial_timeout_s``), and its outcome closes or reopens the
    circuit. An unhealthy probe (or one that raises) restarts the wait.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        probe: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        trial_timeout_s: float = 30.0,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.probe = probe or (lambda: True)
        self.clock = clock
        self.trial_timeout_s = trial_timeout_s
        self.state = CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None
        self._probing: threading.Thread | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May the next request go to the cloud? Never blocks."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN:
                return self._admit_trial()
            if self._probing is None and self.clock() - self._opened_at >= self.reset_timeout_s:
                self._probing = threading.Thread(target=self._probe_health, name="breaker-probe", daemon=True)
                self._probing.start()
            return False

    def wait_for_probe(self, timeout_s: float | None = None) -> None:
        """Block until a running probe has finished (for tests and tools)."""
        probing = self._probing
        if probing is not None:
            probing.join(timeout_s)

    def _probe_health(self) -> None:
        try:
            healthy = bool(self.probe())
        except Exception:  # a probe that raises says "not healthy"; it must not kill anything
            healthy = False
        with self._lock:
            self._probing = None
            if self.state != OPEN:
                return  # an outcome was recorded meanwhile
            if healthy:
                self.state = HALF_OPEN
            else:
                self._opened_at = self.clock()

    def _admit_trial(self) -> bool:
        now = self.clock()
        if self._trial_started is not None and now - self._trial_started < self.trial_timeout_s:
            return False
        self._trial_started = now
        return True

    def record_success(self) -> None:
        """A cloud call produced a usable answer: close the circuit."""
        with self._lock:
            self.state = CLOSED
            self.failures = 0
            self._trial_started = None

    def release_trial(self) -> None:
        """A call was admitted but never made (the edge could not build its request): free the trial slot."""
        with self._lock:
            if self.state == HALF_OPEN:
                self._trial_started = None

    def record_failure(self) -> None:
        """A cloud call failed (error, timeout or unusable answer): count it; a failed trial reopens at once."""
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
                self.state = OPEN
                self._opened_at = self.clock()
                self._trial_started = None
