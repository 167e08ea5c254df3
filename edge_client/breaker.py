"""Circuit breaker: stop calling a failing cloud, probe its health before trying again."""

from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures.

    While open, calls are answered locally. After ``reset_timeout_s`` the next
    call runs ``probe`` (the gRPC health check); if the cloud reports healthy,
    one trial request goes through (half-open) and its outcome closes or reopens
    the circuit.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        probe: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.probe = probe or (lambda: True)
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May the next request go to the cloud?"""
        with self._lock:
            if self.state != OPEN:
                return True
            if self.clock() - self._opened_at < self.reset_timeout_s:
                return False
            if not self.probe():
                self._opened_at = self.clock()
                return False
            self.state = HALF_OPEN
            return True

    def record_success(self) -> None:
        with self._lock:
            self.state = CLOSED
            self.failures = 0

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
                self.state = OPEN
                self._opened_at = self.clock()
