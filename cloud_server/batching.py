"""Dynamic batching: concurrent requests grouped into one forward pass, as inference servers do.

Two batchers, one per idea; the engine picks one per model:

- :class:`ThreadBatcher`: a worker thread of its own computes, for a model that
  costs milliseconds (the forward pass must not hold the event loop). It takes
  the oldest request and waits at most ``max_queue_delay`` for more, and only
  while others are already queued: a lone request is not held, while under
  load the queue fills during each forward pass and batches form by
  themselves.
- :class:`LoopBatcher`: the event loop itself computes, in a turn of its own,
  for a model that costs microseconds (the attention stage in NumPy): no
  thread hand-off. A request that finds no sign of concurrent callers (the
  last batch held one request) runs in the loop's next turn, so a lone caller
  never waits; once a batch held several, the next waits for as many (or a
  full batch), at most ``max_queue_delay`` after the first. Health checks get
  their turn between batches.

Both follow the same rules. ``max_batch_size`` 1 or ``max_queue_delay`` 0:
every request is a batch of its own. Nothing waits forever: a request is
refused at once when the queue is full (:class:`QueueFull`) or the batcher is
closed (:class:`BatcherClosed`); one whose deadline has passed, or whose caller
cancelled it, is dropped before it is computed (:class:`DeadlineExpired`); an
exception in the forward pass goes to every request of its batch (as the
cause of :class:`BatchFailed`) and the batcher carries on. Each request is
answered in its batch's turn with ``respond(request, result)`` (the server
builds its response there), or with its :class:`BatchResult` when there is no
``respond``; an exception from ``respond`` goes to that request alone.

Inputs and outputs are NumPy arrays with a batch dimension; the runtime
converts for PyTorch, so this module imports no framework.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = ["BatchError", "QueueFull", "BatcherClosed", "DeadlineExpired", "BatchFailed", "BatchResult", "ThreadBatcher", "LoopBatcher"]

log = logging.getLogger(__name__)
Forward = Callable[[np.ndarray], np.ndarray]
Respond = Callable[[Any, "BatchResult"], Any]
Prepare = Callable[[Any], np.ndarray]


class BatchError(Exception):
    """Why a batcher did not answer a request."""


class QueueFull(BatchError):
    """More requests are waiting than the server accepts; the client should back off."""


class BatcherClosed(BatchError):
    """The batcher was stopped (the server is draining)."""


class DeadlineExpired(BatchError):
    """The request's deadline passed while it waited; it was not computed."""


class BatchFailed(BatchError):
    """The forward pass of the request's batch raised (the exception is the cause; it was logged)."""


class BatchResult(NamedTuple):
    """One request's rows of a batch output and what its batch cost."""

    output: np.ndarray
    queue_seconds: float
    compute_seconds: float
    batch_size: int


class _Pending:
    """A queued request: its input rows, what ``respond`` gets, its deadline and its future."""

    __slots__ = ("inputs", "request", "deadline", "future", "enqueued", "rows")

    def __init__(self, inputs: np.ndarray | None, request: Any, deadline: float | None, future: Any) -> None:
        self.inputs, self.request, self.deadline, self.future = inputs, request, deadline, future
        self.enqueued = time.perf_counter()
        self.rows = 1 if inputs is None else int(inputs.shape[0])  # None: prepared in its batch's turn, counted as one row till then


def _forward(forward: Forward, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float, int]:
    """``forward`` on the concatenated inputs: each input's rows, the seconds it took, the batch size."""
    started = time.perf_counter()
    output = forward(np.concatenate(inputs) if len(inputs) > 1 else inputs[0])
    compute = time.perf_counter() - started
    sizes = [int(x.shape[0]) for x in inputs]
    total = sum(sizes)
    if len(output) != total:
        raise RuntimeError(f"forward returned {len(output)} rows for {total} inputs")
    if len(inputs) == 1:
        return [output], compute, total
    return np.split(output, np.cumsum(sizes[:-1])), compute, total


def _expired(pending: _Pending, now: float) -> bool:
    """Has ``pending``'s deadline passed? Then its future says so."""
    if pending.deadline is None or now < pending.deadline:
        return False
    pending.future.set_exception(DeadlineExpired(f"deadline passed after {now - pending.enqueued:.3f} s in the queue"))
    return True


class _Batcher:
    """What both batchers share: the settings, and a batch computed and answered."""

    def __init__(
        self, forward: Forward, respond: Respond | None = None, max_batch_size: int = 32, max_queue_delay: float = 0.002,
        max_queue_size: int = 512, on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.forward = forward  # read per batch: tests replace it with a slow or failing one
        self.respond = respond
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.batching = max_batch_size > 1 and max_queue_delay > 0
        self.limit = max_batch_size if self.batching else 1  # rows a batch takes before it stops taking more
        self.on_batch = on_batch or (lambda size, seconds: None)
        self._closed = False

    def _refuse(self, queued: int) -> None:
        """Raise when a request cannot be queued."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if queued >= self.max_queue_size:
            raise QueueFull(f"{self.max_queue_size} requests already queued")

    def _answer(self, batch: list[_Pending], started: float) -> None:
        """Compute ``batch`` and settle each request's future (skipping those whose callers gave up)."""
        try:
            rows, compute, size = _forward(self.forward, [p.inputs for p in batch])
        except Exception as error:  # every request of the batch hears about it; the batcher carries on
            log.exception("batch of %d requests failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    failed = BatchFailed(f"{type(error).__name__}: {error}")
                    failed.__cause__ = error
                    pending.future.set_exception(failed)
            return
        self.on_batch(size, compute)
        for pending, part in zip(batch, rows):
            if not pending.future.done():
                self._settle(pending, BatchResult(part, started - pending.enqueued, compute, size))

    def _settle(self, pending: _Pending, result: BatchResult) -> None:
        """``pending``'s future gets ``respond``'s answer (or its exception), else ``result`` itself."""
        if self.respond is None:
            pending.future.set_result(result)
            return
        try:
            answer = self.respond(pending.request, result)
        except Exception as error:  # this request's own problem (e.g. its output cannot be encoded)
            pending.future.set_exception(error)
        else:
            pending.future.set_result(answer)


class ThreadBatcher(_Batcher):
    """Batches computed on one worker thread; callers on any thread get a :class:`concurrent.futures.Future`.

    ``on_batch(size, compute_seconds)`` is called once per batch computed.
    """

    def __init__(self, forward: Forward, respond: Respond | None = None, *, name: str = "batcher", **settings: Any) -> None:
        super().__init__(forward, respond, **settings)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, inputs: np.ndarray, deadline: float | None = None, request: Any = None) -> Future:
        """Queue ``inputs`` (``deadline``: a ``time.perf_counter()`` value); never blocks.

        Raises :class:`QueueFull` or :class:`BatcherClosed` at once. Cancelling
        the future before its batch starts drops the request.
        """
        pending = _Pending(inputs, request, deadline, Future())
        with self._condition:  # the closed check and the append are one step: nothing lands after close
            self._refuse(len(self._queue))
            self._queue.append(pending)
            self._condition.notify()
        return pending.future

    def _take(self, timeout: float | None) -> _Pending | None:
        """The oldest queued request; None when the queue stays empty for ``timeout`` or the batcher is closed and empty."""
        with self._condition:
            if timeout is None:
                while not self._queue and not self._closed:
                    self._condition.wait()
            elif not self._queue and timeout > 0:
                self._condition.wait(timeout)
            return self._queue.popleft() if self._queue else None

    @staticmethod
    def _admit(pending: _Pending) -> bool:
        """Start ``pending`` unless its caller gave up (cancelled) or its deadline passed."""
        return pending.future.set_running_or_notify_cancel() and not _expired(pending, time.perf_counter())

    def _collect(self) -> list[_Pending] | None:
        """The next batch (possibly empty when all it took was dropped); None once closed and drained."""
        first = self._take(None)
        if first is None:
            return None
        batch = [first] if self._admit(first) else []
        rows = sum(p.rows for p in batch)
        wait_until = first.enqueued + self.max_queue_delay
        while rows < self.limit and self._queue:  # waits only while others are queued
            pending = self._take(wait_until - time.perf_counter())
            if pending is None:
                break
            if self._admit(pending):
                batch.append(pending)
                rows += pending.rows
        return batch

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            if batch:
                self._answer(batch, time.perf_counter())

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, answer everything queued, then stop the worker.

        Whatever the worker has not answered within ``timeout`` gets :class:`BatcherClosed`.
        """
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)
        with self._condition:
            left, self._queue = list(self._queue), collections.deque()
        for pending in left:
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(BatcherClosed("the server stopped before this request was computed"))


class LoopBatcher(_Batcher):
    """Batches computed on the event loop, in a turn of their own; callers on the loop get an :class:`asyncio.Future`.

    ``on_batch(size, compute_seconds)`` is called once per batch computed.
    """

    def __init__(self, forward: Forward, respond: Respond | None = None, prepare: Prepare | None = None, **settings: Any) -> None:
        super().__init__(forward, respond, **settings)
        self.prepare = prepare  # request -> inputs, for requests submitted without inputs
        self._queue: collections.deque[_Pending] = collections.deque()
        self._rows = 0  # rows queued
        self._last_batch = 0  # rows of the last batch: more than one means concurrent callers
        self._turn: asyncio.Handle | None = None  # the next batch's scheduled run
        self._waits = False  # that run is a timer: waiting for company

    def submit(self, inputs: np.ndarray | None, deadline: float | None = None, request: Any = None) -> asyncio.Future:
        """On the event loop: queue ``inputs`` for a batch the loop runs soon (see the module's docstring).

        ``inputs`` None: ``prepare(request)`` gives them in the batch's turn (an
        exception from it goes to that request alone), so that the requests of
        a batch are prepared together, in one tight loop, rather than one by
        one between everything else the loop runs.

        Raises :class:`QueueFull` or :class:`BatcherClosed` at once; cancelling
        the future before its batch runs drops the request.
        """
        self._refuse(len(self._queue))
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, request, deadline, loop.create_future())
        self._queue.append(pending)
        self._rows += pending.rows
        if self._turn is None:
            self._waits = self.batching and self._last_batch > 1
            self._turn = loop.call_later(self.max_queue_delay, self._run) if self._waits else loop.call_soon(self._run)
        elif self._waits and self._rows >= min(self._last_batch, self.max_batch_size):
            self._turn.cancel()  # as many as last time (or a full batch): no need to wait longer
            self._turn, self._waits = loop.call_soon(self._run), False
        return pending.future

    def _take(self, now: float) -> list[_Pending]:
        """The oldest requests, up to the limit, less those dropped; the rest stay queued."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue and rows < self.limit:
            pending = self._queue.popleft()
            self._rows -= pending.rows
            if pending.future.done() or _expired(pending, now):  # done: its caller gave up (cancelled)
                continue
            if pending.inputs is None:
                try:
                    pending.inputs = self.prepare(pending.request)  # type: ignore[misc]
                except Exception as error:  # this request's own problem (malformed, refused)
                    pending.future.set_exception(error)
                    continue
                pending.rows = int(pending.inputs.shape[0])
            batch.append(pending)
            rows += pending.rows
        self._last_batch = rows
        return batch

    def _run(self) -> None:
        """One batch's turn; what is left waits for the next turn."""
        now = time.perf_counter()
        batch = self._take(now)
        self._turn = asyncio.get_running_loop().call_soon(self._run) if self._queue else None
        self._waits = False
        if batch:
            self._answer(batch, now)

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests; those queued are answered in their turns on the loop (nothing to join: ``timeout`` is unused)."""
        self._closed = True
