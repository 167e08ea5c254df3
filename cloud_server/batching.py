"""Dynamic batching: concurrent requests grouped into one forward pass.

As inference servers do it: a worker thread takes the oldest request, waits at
most ``max_queue_delay`` for more, stops at ``max_batch_size`` items, runs them
as one batch and hands each request its slice. It waits only while other
requests are already queued: a lone request (concurrency 1) is not held for the
full delay, while under load the queue fills during each forward pass and
batches form by themselves. Without batching (max batch 1 or no delay) every
request is a batch of its own. Either way the model runs only on the worker
thread, so the number of threads computing is bounded whatever the number of
callers.

Nothing waits forever: a request is refused at once when the queue is full
(:class:`QueueFull`) or the batcher is closed (:class:`BatcherClosed`); a
request whose deadline has passed, or whose caller cancelled its future, is
dropped before it is computed; an exception anywhere in a batch (the forward
pass, splitting its output) is handed to every request of that batch and the
worker carries on; closing answers everything queued before the worker stops.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts; the client should back off."""


class BatcherClosed(Exception):
    """The batcher was stopped (the server is draining)."""


class DeadlineExpired(Exception):
    """The request's deadline passed while it waited; it was not computed."""


@dataclass(frozen=True)
class BatchResult:
    """One request's rows of a batch output and what its batch cost."""

    output: Tensor
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass
class _Pending:
    inputs: Tensor
    deadline: float | None  # time.perf_counter() value; None: no deadline
    finish: Callable[[BatchResult], Any] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def items(self) -> int:
        return int(self.inputs.shape[0])


class DynamicBatcher:
    """Run ``forward`` on batches of concatenated requests (each request: a tensor with a batch dim).

    ``on_expired(count)`` is called (from the worker) for requests dropped
    because their deadline passed, so the server can count them.
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        max_batch_size: int = 32,
        max_queue_delay: float = 0.002,
        max_queue_size: int = 512,
        name: str = "batcher",
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward  # read per batch: tests and drivers may replace it
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.enabled = max_batch_size > 1 and max_queue_delay > 0
        self.on_expired = on_expired or (lambda count: None)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        """Requests waiting for the worker."""
        with self._condition:
            return len(self._queue)

    def submit(self, inputs: Tensor, deadline: float | None = None, finish: Callable[[BatchResult], Any] | None = None) -> Future:
        """Queue ``inputs``; the future gets a :class:`BatchResult` or the exception that stopped it.

        With ``finish``, the future gets ``finish(result)`` instead, computed on
        the worker (the server builds its response there, off the event loop);
        an exception from ``finish`` goes to that request alone.
        Never blocks. Raises :class:`QueueFull` or :class:`BatcherClosed` at once.
        Cancelling the future before its batch starts drops the request.
        """
        pending = _Pending(inputs, deadline, finish)
        with self._condition:  # the closed check and the append are one step: nothing lands after close
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if len(self._queue) >= self.max_queue_size:
                raise QueueFull(f"{self.max_queue_size} requests already queued")
            self._queue.append(pending)
            self._condition.notify()
        return pending.future

    def infer(self, inputs: Tensor, timeout: float | None = None) -> BatchResult:
        """Blocking: the output rows belonging to ``inputs`` and the timings of its batch."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        return self.submit(inputs, deadline).result()

    # -- worker -------------------------------------------------------------------

    def _take(self, timeout: float | None) -> _Pending | None:
        """The oldest queued request; None when the queue stays empty for ``timeout`` or the batcher is closed and empty."""
        with self._condition:
            if timeout is None:
                while not self._queue and not self._closed:
                    self._condition.wait()
            elif not self._queue and timeout > 0:
                self._condition.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def _admit(self, pending: _Pending, now: float) -> bool:
        """Start ``pending`` unless its caller gave up (cancelled) or its deadline passed."""
        if not pending.future.set_running_or_notify_cancel():
            return False
        if pending.deadline is not None and now >= pending.deadline:
            pending.future.set_exception(DeadlineExpired(f"deadline passed after {now - pending.enqueued:.3f} s in the queue"))
            self.on_expired(1)
            return False
        return True

    def _collect(self) -> list[_Pending] | None:
        """The next batch to run (possibly empty when all it took was dropped); None once closed and drained."""
        first = self._take(None)
        if first is None:
            return None
        batch = [first] if self._admit(first, time.perf_counter()) else []
        items = sum(p.items for p in batch)
        limit = self.max_batch_size if self.enabled else 1
        wait_until = first.enqueued + self.max_queue_delay
        while items < limit and self.queued:
            pending = self._take(wait_until - time.perf_counter())
            if pending is None:
                break
            if self._admit(pending, time.perf_counter()):
                batch.append(pending)
                items += pending.items
        return batch

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = self.forward(torch.cat([p.inputs for p in batch]) if len(batch) > 1 else batch[0].inputs)
            compute = time.perf_counter() - started
            rows = output.split([p.items for p in batch])
            if len(rows) != len(batch):
                raise RuntimeError(f"forward returned {output.shape[0]} rows for {sum(p.items for p in batch)} inputs")
            for pending, part in zip(batch, rows):
                self._finish(pending, BatchResult(part, started - pending.enqueued, compute, int(output.shape[0])))
        except BaseException as error:  # every request of the batch must hear about it; the worker lives on
            log.exception("batch of %d requests failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)

    @staticmethod
    def _finish(pending: _Pending, result: BatchResult) -> None:
        if pending.finish is None:
            pending.future.set_result(result)
            return
        try:
            value = pending.finish(result)
        except Exception as error:  # this request's own problem (e.g. its output cannot be encoded)
            pending.future.set_exception(error)
        else:
            pending.future.set_result(value)

    # -- shutdown -----------------------------------------------------------------

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
