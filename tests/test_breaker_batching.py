"""The circuit breaker's states and the dynamic batcher's grouping, with real threads and a fake clock."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from cloud_server.batching import BatcherClosed, DynamicBatcher, QueueFull
from edge_client.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_probes_before_closing() -> None:
    clock, healthy = Clock(), {"value": False}
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, probe=lambda: healthy["value"], clock=clock)
    breaker.record_failure()
    assert breaker.allow() and breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 6
    assert not breaker.allow()  # probe says unhealthy: stays open, timer restarts
    clock.now = 10
    assert not breaker.allow()
    healthy["value"] = True
    clock.now = 12
    assert breaker.allow() and breaker.state == HALF_OPEN
    breaker.record_failure()  # the trial failed: open again at once
    assert breaker.state == OPEN
    clock.now = 20
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.failures == 0


def test_batcher_groups_concurrent_requests_and_returns_each_its_rows() -> None:
    seen_batches = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen_batches.append(x.shape[0])
        time.sleep(0.05)  # requests arriving meanwhile queue up for the next batch
        return x * 2

    batcher = DynamicBatcher(forward, max_batch_size=8, max_queue_delay=0.2)
    results = {}

    def call(i: int) -> None:
        results[i] = batcher.infer(torch.full((1, 3), float(i)))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert all(torch.equal(results[i].output, torch.full((1, 3), 2.0 * i)) for i in range(6))
    assert sum(seen_batches) == 6 and max(seen_batches) > 1
    assert all(r.queue_seconds >= 0 and r.batch_size in seen_batches for r in results.values())


def test_batcher_respects_max_batch_size() -> None:
    sizes = []
    batcher = DynamicBatcher(lambda x: sizes.append(x.shape[0]) or time.sleep(0.02) or x, max_batch_size=2, max_queue_delay=0.2)
    threads = [threading.Thread(target=batcher.infer, args=(torch.zeros(1, 1),)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert max(sizes) <= 2 and sum(sizes) == 5


def test_batcher_errors_reach_every_waiting_request() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kernel failed")

    batcher = DynamicBatcher(broken, max_batch_size=4, max_queue_delay=0.01)
    with pytest.raises(RuntimeError, match="kernel failed"):
        batcher.infer(torch.zeros(1, 1))
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.infer(torch.zeros(1, 1))


def test_full_queue_is_refused_not_blocked() -> None:
    release = threading.Event()
    batcher = DynamicBatcher(lambda x: release.wait(5) and x, max_batch_size=1 + 1, max_queue_delay=0.001, max_queue_size=1)
    first = threading.Thread(target=batcher.infer, args=(torch.zeros(2, 1),))
    first.start()
    time.sleep(0.1)  # the worker now holds the first batch
    second = threading.Thread(target=batcher.infer, args=(torch.zeros(1, 1),))
    second.start()
    time.sleep(0.1)  # the second fills the queue
    with pytest.raises(QueueFull):
        batcher.infer(torch.zeros(1, 1))
    release.set()
    first.join()
    second.join()
    batcher.close()


def test_a_lone_request_is_not_held_for_the_full_delay() -> None:
    batcher = DynamicBatcher(lambda x: x, max_batch_size=8, max_queue_delay=5.0)
    started = time.perf_counter()
    result = batcher.infer(torch.zeros(1, 1))
    batcher.close()
    assert time.perf_counter() - started < 2.5 and result.batch_size == 1


def test_without_batching_requests_run_on_the_callers_thread() -> None:
    threads = []
    batcher = DynamicBatcher(lambda x: threads.append(threading.current_thread()) or x, max_batch_size=1)
    batcher.infer(torch.zeros(1, 1))
    assert threads == [threading.current_thread()] and not batcher.enabled
