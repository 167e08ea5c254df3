"""The circuit breaker's states and the dynamic batchers' grouping (on a thread, on the event loop), with real threads and a fake clock."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from cloud_server.batching import BatcherClosed, BatchFailed, BatchResult, DeadlineExpired, LoopBatcher, QueueFull, ThreadBatcher
from edge_client.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _infer(batcher: ThreadBatcher, inputs: np.ndarray, timeout: float | None = None) -> BatchResult:
    """Blocking: ``inputs`` through ``batcher`` (``timeout``: its deadline, from now)."""
    return batcher.submit(inputs, None if timeout is None else time.perf_counter() + timeout).result()


def _probe_now(breaker: CircuitBreaker) -> bool:
    """One call that starts a probe (answered locally at once), then that probe's end."""
    started = breaker.allow()
    breaker.wait_for_probe(5)
    return started


def test_breaker_opens_after_threshold_and_probes_before_closing() -> None:
    clock, healthy = Clock(), {"value": False}
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, probe=lambda: healthy["value"], clock=clock)
    breaker.record_failure()
    assert breaker.allow() and breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 6
    assert not _probe_now(breaker) and breaker.state == OPEN  # probe says unhealthy: stays open, timer restarts
    clock.now = 10
    assert not breaker.allow()
    healthy["value"] = True
    clock.now = 12
    assert not _probe_now(breaker)  # the call that starts the probe never waits for it ...
    assert breaker.state == HALF_OPEN and breaker.allow()  # ... the next one is the trial
    breaker.record_failure()  # the trial failed: open again at once
    assert breaker.state == OPEN
    clock.now = 20
    _probe_now(breaker)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.failures == 0


def test_batcher_groups_concurrent_requests_and_returns_each_its_rows() -> None:
    seen_batches = []

    def forward(x: np.ndarray) -> np.ndarray:
        seen_batches.append(x.shape[0])
        time.sleep(0.05)  # requests arriving meanwhile queue up for the next batch
        return x * 2

    batcher = ThreadBatcher(forward, max_batch_size=8, max_queue_delay=0.2)
    results = {}

    def call(i: int) -> None:
        results[i] = _infer(batcher, np.full((1, 3), float(i)))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert all(np.array_equal(results[i].output, np.full((1, 3), 2.0 * i)) for i in range(6))
    assert sum(seen_batches) == 6 and max(seen_batches) > 1
    assert all(r.queue_seconds >= 0 and r.batch_size in seen_batches for r in results.values())


def test_batcher_respects_max_batch_size() -> None:
    sizes = []
    batcher = ThreadBatcher(lambda x: sizes.append(x.shape[0]) or time.sleep(0.02) or x, max_batch_size=2, max_queue_delay=0.2)
    threads = [threading.Thread(target=_infer, args=(batcher, np.zeros((1, 1)),)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert max(sizes) <= 2 and sum(sizes) == 5


def test_batcher_errors_reach_every_waiting_request() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("kernel failed")

    batcher = ThreadBatcher(broken, max_batch_size=4, max_queue_delay=0.01)
    with pytest.raises(BatchFailed, match="kernel failed") as caught:
        _infer(batcher, np.zeros((1, 1)))
    assert isinstance(caught.value.__cause__, RuntimeError)
    batcher.close()
    with pytest.raises(BatcherClosed):
        _infer(batcher, np.zeros((1, 1)))


def test_full_queue_is_refused_not_blocked() -> None:
    release = threading.Event()
    batcher = ThreadBatcher(lambda x: release.wait(5) and x, max_batch_size=1 + 1, max_queue_delay=0.001, max_queue_size=1)
    first = threading.Thread(target=_infer, args=(batcher, np.zeros((2, 1)),))
    first.start()
    time.sleep(0.1)  # the worker now holds the first batch
    second = threading.Thread(target=_infer, args=(batcher, np.zeros((1, 1)),))
    second.start()
    time.sleep(0.1)  # the second fills the queue
    with pytest.raises(QueueFull):
        _infer(batcher, np.zeros((1, 1)))
    release.set()
    first.join()
    second.join()
    batcher.close()


def test_a_lone_request_is_not_held_for_the_full_delay() -> None:
    batcher = ThreadBatcher(lambda x: x, max_batch_size=8, max_queue_delay=5.0)
    started = time.perf_counter()
    result = _infer(batcher, np.zeros((1, 1)))
    batcher.close()
    assert time.perf_counter() - started < 2.5 and result.batch_size == 1


def test_without_batching_each_request_is_a_batch_of_its_own_on_the_worker() -> None:
    threads, sizes = [], []

    def forward(x: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread())
        sizes.append(x.shape[0])
        time.sleep(0.02)
        return x

    batcher = ThreadBatcher(forward, max_batch_size=1)
    callers = [threading.Thread(target=_infer, args=(batcher, np.zeros((1, 1)),)) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    batcher.close()
    assert not batcher.batching and sizes == [1, 1, 1, 1]
    assert len(set(threads)) == 1 and threads[0] not in callers  # one compute thread, not the callers'


class Gate:
    """A forward pass that blocks until released, so tests can hold the worker busy."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[float] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.seen.extend(x[:, 0].tolist())
        self.entered.set()
        assert self.release.wait(10)
        return x


def _hold_worker(batcher: ThreadBatcher, gate: Gate) -> Future:
    busy = batcher.submit(np.full((1, 1), -1.0))
    assert gate.entered.wait(5)
    return busy


class FailingOn(Gate):
    """A gated forward pass that raises for batches holding ``bad`` and, with ``wrong_rows``, returns too few rows."""

    def __init__(self, bad: float, wrong_rows: bool = False) -> None:
        super().__init__()
        self.bad, self.wrong_rows = bad, wrong_rows

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = super().__call__(x)
        if bool((x == self.bad).any()):
            if self.wrong_rows:
                return x[:1]  # split() of a 3-request batch then raises in the worker
            raise RuntimeError("kernel failed")
        return x


@pytest.mark.parametrize("wrong_rows", [False, True])
def test_an_exception_in_a_batch_reaches_its_requests_and_the_worker_survives(wrong_rows: bool) -> None:
    forward = FailingOn(7.0, wrong_rows)
    batcher = ThreadBatcher(forward, max_batch_size=8, max_queue_delay=0.05)
    busy = _hold_worker(batcher, forward)
    failing = [batcher.submit(np.full((1, 1), 7.0)) for _ in range(3)]
    forward.release.set()
    assert busy.result(timeout=5).output.item() == -1.0
    errors = [f.exception(timeout=5) for f in failing]
    assert all(isinstance(e, BatchFailed) and isinstance(e.__cause__, RuntimeError) for e in errors), errors
    if not wrong_rows:
        assert all("kernel failed" in str(e) for e in errors)
    assert _infer(batcher, np.ones((1, 1)), timeout=5).output.item() == 1.0  # the worker lives
    batcher.close()
    with pytest.raises(BatcherClosed):
        _infer(batcher, np.zeros((1, 1)))


def test_close_racing_infers_never_leaves_a_request_waiting() -> None:
    for _ in range(20):
        batcher = ThreadBatcher(lambda x: x, max_batch_size=4, max_queue_delay=0.001)
        outcomes: list[str] = []
        start = threading.Barrier(9)

        def call() -> None:
            start.wait()
            for _ in range(50):
                try:
                    future = batcher.submit(np.zeros((1, 1)))
                except BatcherClosed:
                    outcomes.append("refused")
                    continue
                try:
                    future.result(timeout=5)  # raises TimeoutError, failing the test, if it waits forever
                    outcomes.append("answered")
                except BatcherClosed:
                    outcomes.append("closed")

        callers = [threading.Thread(target=call) for _ in range(8)]
        for t in callers:
            t.start()
        start.wait()
        time.sleep(0.001)
        batcher.close()
        for t in callers:
            t.join(10)
            assert not t.is_alive()
        assert len(outcomes) == 8 * 50


def test_full_queue_is_refused_within_milliseconds() -> None:
    gate = Gate()
    batcher = ThreadBatcher(gate, max_batch_size=4, max_queue_delay=0.001, max_queue_size=3)
    busy = _hold_worker(batcher, gate)
    queued = [batcher.submit(np.zeros((1, 1))) for _ in range(3)]
    started = time.perf_counter()
    with pytest.raises(QueueFull):
        batcher.submit(np.zeros((1, 1)))
    assert time.perf_counter() - started < 0.05
    gate.release.set()
    assert all(f.result(timeout=5) for f in [busy, *queued])
    batcher.close()


def test_expired_and_cancelled_requests_are_dropped_before_compute() -> None:
    gate = Gate()
    batcher = ThreadBatcher(gate, max_batch_size=8, max_queue_delay=0.001)
    _hold_worker(batcher, gate)
    late = batcher.submit(np.full((1, 1), 1.0), deadline=time.perf_counter() + 0.05)
    gone = batcher.submit(np.full((1, 1), 2.0))
    kept = batcher.submit(np.full((1, 1), 3.0), deadline=time.perf_counter() + 30)
    assert gone.cancel()
    time.sleep(0.1)  # the first deadline passes while the worker is busy
    gate.release.set()
    assert isinstance(late.exception(timeout=5), DeadlineExpired)
    assert kept.result(timeout=5).output.item() == 3.0
    batcher.close()
    assert gate.seen == [-1.0, 3.0]


def test_close_answers_everything_queued() -> None:
    gate = Gate()
    batcher = ThreadBatcher(gate, max_batch_size=2, max_queue_delay=0.001)
    busy = _hold_worker(batcher, gate)
    queued = [batcher.submit(np.full((1, 1), float(i))) for i in range(5)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosed):
        batcher.submit(np.zeros((1, 1)))  # draining: nothing new
    gate.release.set()
    closer.join(10)
    assert busy.result(timeout=1).output.item() == -1.0
    assert [f.result(timeout=1).output.item() for f in queued] == [0.0, 1.0, 2.0, 3.0, 4.0]


def _opened(clock: Clock, **kwargs) -> CircuitBreaker:
    """An open breaker whose reset time has passed and whose probe (healthy by default) has run: half-open."""
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock, **kwargs)
    breaker.record_failure()
    clock.now = 10
    _probe_now(breaker)
    return breaker


def test_half_open_admits_one_trial_at_a_time() -> None:
    clock = Clock()
    breaker = _opened(clock)
    start = threading.Barrier(8)
    admitted: list[bool] = []

    def caller() -> None:
        start.wait()
        admitted.append(breaker.allow())

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 1 and breaker.state == HALF_OPEN
    assert not breaker.allow()  # the trial is still out
    breaker.record_success()
    assert breaker.state == CLOSED and all(breaker.allow() for _ in range(3))


def test_a_trial_that_never_reports_frees_its_slot_after_the_trial_timeout() -> None:
    clock = Clock()
    breaker = _opened(clock, trial_timeout_s=3)
    assert breaker.allow() and not breaker.allow()
    clock.now = 14
    assert breaker.allow()


def test_a_slow_probe_blocks_nobody() -> None:
    release, clock = threading.Event(), Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock, probe=lambda: release.wait(10))
    breaker.record_failure()
    clock.now = 10
    started = time.perf_counter()
    assert not breaker.allow()  # starts the probe, answered locally at once
    assert not breaker.allow()  # a second caller: no second probe, no waiting
    assert time.perf_counter() - started < 0.1 and breaker.state == OPEN
    release.set()
    breaker.wait_for_probe(5)
    assert breaker.state == HALF_OPEN and breaker.allow()  # the probe found it healthy: one trial goes through


def test_a_probe_that_raises_counts_as_unhealthy() -> None:
    def broken() -> bool:
        raise OSError("connection refused")

    clock = Clock()
    breaker = _opened(clock, probe=broken)
    assert not breaker.allow() and breaker.state == OPEN


# -- inline batches: computed on the event loop, in its next turn ------------------------------


def _on_loop(coroutine_function):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine_function())


def test_inline_batch_holds_what_arrived_in_one_turn_and_runs_on_the_loop_thread() -> None:
    seen: list[tuple[int, threading.Thread]] = []

    def forward(x: np.ndarray) -> np.ndarray:
        seen.append((x.shape[0], threading.current_thread()))
        return x * 2

    batcher = LoopBatcher(forward, max_batch_size=8, max_queue_delay=0.002)

    async def run() -> list:
        lone = await batcher.submit(np.full((1, 2), 5.0))  # nothing else queued: a batch of its own, at once
        futures = [batcher.submit(np.full((1, 2), float(i))) for i in range(5)]
        return [lone, *await asyncio.gather(*futures)]

    results = _on_loop(run)
    batcher.close()
    assert [size for size, _ in seen] == [1, 5]
    assert all(thread is threading.main_thread() for _, thread in seen)  # no hand-off to the worker
    assert np.array_equal(results[0].output, np.full((1, 2), 10.0))
    assert [r.output[0, 0] for r in results[1:]] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(r.batch_size == 5 for r in results[1:])


def test_inline_batches_respect_max_batch_size_and_take_turns() -> None:
    sizes: list[int] = []
    batcher = LoopBatcher(lambda x: sizes.append(x.shape[0]) or x, max_batch_size=2, max_queue_delay=0.002)

    async def run() -> list:
        return await asyncio.gather(*[batcher.submit(np.full((1, 1), float(i))) for i in range(5)])

    results = _on_loop(run)
    batcher.close()
    assert sizes == [2, 2, 1] and [r.output.item() for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_inline_errors_expired_cancelled_full_and_closed() -> None:
    def forward(x: np.ndarray) -> np.ndarray:
        if (x == 7.0).any():
            raise RuntimeError("kernel failed")
        return x

    batcher = LoopBatcher(forward, max_batch_size=8, max_queue_delay=0.002, max_queue_size=3)

    async def run() -> None:
        failing = [batcher.submit(np.full((1, 1), 7.0)) for _ in range(2)]
        for future in failing:
            with pytest.raises(BatchFailed, match="kernel failed"):
                await future
        late = batcher.submit(np.full((1, 1), 1.0), deadline=time.perf_counter() - 0.001)
        gone = batcher.submit(np.full((1, 1), 2.0))
        kept = batcher.submit(np.full((1, 1), 3.0))
        with pytest.raises(QueueFull):
            batcher.submit(np.zeros((1, 1)))
        gone.cancel()
        with pytest.raises(DeadlineExpired):
            await late
        assert (await kept).output.item() == 3.0 and (await kept).batch_size == 1  # the cancelled one was not computed
        assert (await batcher.submit(np.ones((1, 1)))).output.item() == 1.0  # the loop's batches carry on
        batcher.close()
        with pytest.raises(BatcherClosed):
            batcher.submit(np.zeros((1, 1)))

    _on_loop(run)


def test_inline_waits_for_company_only_after_a_batch_of_several() -> None:
    """A lone caller never waits; once a batch held several requests, the next waits (at most the delay) until as many have come."""
    sizes: list[int] = []
    batcher = LoopBatcher(lambda x: sizes.append(x.shape[0]) or x, max_batch_size=8, max_queue_delay=0.5)

    async def timed(*futures) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        await asyncio.gather(*futures)
        return time.perf_counter() - started

    async def run() -> list[float]:
        lone = await timed(batcher.submit(np.zeros((1, 1))))  # no concurrency seen: the next turn
        pair = await timed(*[batcher.submit(np.zeros((1, 1))) for _ in range(2)])  # a batch of 2, at once
        waited = await timed(batcher.submit(np.zeros((1, 1))))  # after a pair: waits the delay for a second one
        company = asyncio.ensure_future(timed(batcher.submit(np.zeros((1, 1)))))  # after a lone batch again: no wait ...
        await asyncio.sleep(0)
        return [lone, pair, waited, await company]

    lone, pair, waited, company = _on_loop(run)
    batcher.close()
    assert sizes == [1, 2, 1, 1]
    assert lone < 0.25 and pair < 0.25 and company < 0.25  # generous bounds: far below the 0.5 s delay
    assert waited >= 0.45


def test_inline_batch_that_reaches_the_last_size_runs_without_waiting() -> None:
    sizes: list[int] = []
    batcher = LoopBatcher(lambda x: sizes.append(x.shape[0]) or x, max_batch_size=8, max_queue_delay=5.0)

    async def run() -> float:
        await asyncio.gather(*[batcher.submit(np.zeros((1, 1))) for _ in range(3)])  # concurrency of 3 seen
        started = time.perf_counter()
        first = batcher.submit(np.zeros((1, 1)))  # waits for company ...
        await asyncio.sleep(0.05)
        await asyncio.gather(first, *[batcher.submit(np.zeros((1, 1))) for _ in range(2)])  # ... and 3 came: no 5 s wait
        return time.perf_counter() - started

    elapsed = _on_loop(run)
    batcher.close()
    assert sizes == [3, 3] and elapsed < 2.5


def _respond(text: str, result: BatchResult) -> str:
    """An answer built in the batch's turn; none for request "3"."""
    if text == "3":
        raise RuntimeError("cannot answer 3")
    return f"{text}->{result.output.item():g}@{threading.current_thread().name}"


def test_loop_batcher_answers_in_the_batch_turn_and_a_failed_answer_fails_alone() -> None:
    sizes: list[int] = []
    batcher = LoopBatcher(lambda x: sizes.append(x.shape[0]) or x * 10, _respond, max_batch_size=8, max_queue_delay=0.002)

    async def run() -> list:
        futures = [batcher.submit(np.full((1, 1), float(t)), request=t) for t in ("1", "3", "4")]
        return await asyncio.gather(*futures, return_exceptions=True)

    one, three, four = _on_loop(run)
    batcher.close()
    assert sizes == [3] and (one, four) == ("1->10@MainThread", "4->40@MainThread")
    assert isinstance(three, RuntimeError) and "cannot answer 3" in str(three)


def test_thread_batcher_answers_on_its_worker_and_a_failed_answer_fails_alone() -> None:
    gate = Gate()
    batcher = ThreadBatcher(gate, _respond, max_batch_size=8, max_queue_delay=0.05, name="answering")
    busy = batcher.submit(np.full((1, 1), -1.0), request="-1")
    assert gate.entered.wait(5)
    futures = [batcher.submit(np.full((1, 1), float(t)), request=t) for t in ("1", "3", "4")]
    gate.release.set()
    assert busy.result(timeout=5) == "-1->-1@answering"
    assert [futures[0].result(timeout=5), futures[2].result(timeout=5)] == ["1->1@answering", "4->4@answering"]
    assert isinstance(futures[1].exception(timeout=5), RuntimeError)
    batcher.close()
