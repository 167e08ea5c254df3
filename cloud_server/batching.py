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

Inline batches (``inline=True``, for a model that costs tens of microseconds,
like the attention stage in NumPy): a coroutine queues its request with
:meth:`DynamicBatcher.submit_inline` on the event loop, and the batch runs on
the loop itself, with no thread hand-off. When to run it: a request that finds
no sign of concurrent callers (the last inline batch held one request) runs in
the loop's next turn, so a lone caller never waits and batching costs nothing
when there is nothing to batch. Once a batch held several requests, the next
one waits for company: it runs when as many requests have come as last time
(or a full batch), at the latest ``max_queue_delay`` after the first. Under a
closed-loop load of 64 clients on one core this groups 8 to 20 requests per
batch, and it is not the forward pass that it saves but the per-call work
around it (one timer, one batch of futures resolved, the responses of a batch
sent in one turn): measured in docs/server_faults.md, the server's CPU per request
halves. A batch blocks the loop for its forward pass only (about 0.6 ms for 32
attention maps), so health checks still get their turn between batches. The
worker thread stays for blocking callers (:meth:`submit`).

Inputs and outputs are NumPy arrays with a batch dimension; the runtime
(``runtimes.py``) converts for PyTorch, so this module imports no framework.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["QueueFull", "BatcherClosed", "DeadlineExpired", "BatchResult", "DynamicBatcher"]

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

    output: np.ndarray
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass
class _Pending:
    inputs: np.ndarray
    deadline: float | None  # time.perf_counter() value; None: no deadline
    finish: Callable[[BatchResult], Any] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def items(self) -> int:
        return int(self.inputs.shape[0])


class _InlinePending:
    """A request queued on the event loop for an inline batch: its item, its inputs once prepared, its hooks."""

    __slots__ = ("item", "inputs", "prepare", "finish", "size", "deadline", "future", "enqueued")

    def __init__(self, item: Any, deadline: float | None, future: asyncio.Future, prepare: Callable | None, finish: Callable | None) -> None:
        self.item, self.deadline, self.future, self.prepare, self.finish = item, deadline, future, prepare, finish
        self.inputs: np.ndarray | None = None if prepare else item
        self.size = 1 if prepare else int(item.shape[0])  # what counts towards waiting for company
        self.enqueued = time.perf_counter()


class DynamicBatcher:
    """Run ``forward`` on batches of concatenated requests (each request: an array with a batch dim).

    ``on_expired(count)`` is called (from the thread that drops them) for
    requests dropped because their deadline passed, so the server can count
    them; ``on_batch(size, compute_seconds)`` once per batch computed.
    ``inline``: :meth:`submit_inline` may be used (see the module's docstring).
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_queue_delay: float = 0.002,
        max_queue_size: int = 512,
        name: str = "batcher",
        on_expired: Callable[[int], None] | None = None,
        inline: bool = False,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.forward = forward  # read per batch: tests and drivers may replace it
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self.enabled = max_batch_size > 1 and max_queue_delay > 0
        self.on_expired = on_expired or (lambda count: None)
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.inline = inline
        self._inline: list[_InlinePending] = []  # touched on the event loop only
        self._flush: asyncio.Handle | asyncio.TimerHandle | None = None  # the inline batch's scheduled run
        self._flush_waits = False  # it is a timer: waiting for more requests
        self._inline_items = 0
        self._last_inline_batch = 0  # items in the last inline batch: more than one means concurrent callers
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

    def submit(self, inputs: np.ndarray, deadline: float | None = None, finish: Callable[[BatchResult], Any] | None = None) -> Future:
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

    def infer(self, inputs: np.ndarray, timeout: float | None = None) -> BatchResult:
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

    def _compute(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float, int]:
        """``forward`` on the concatenated inputs: each input's rows, the seconds it took, the batch size."""
        started = time.perf_counter()
        output = self.forward(np.concatenate(inputs) if len(inputs) > 1 else inputs[0])
        compute = time.perf_counter() - started
        sizes = [int(x.shape[0]) for x in inputs]
        total = sum(sizes)
        if len(output) != total:
            raise RuntimeError(f"forward returned {len(output)} rows for {total} inputs")
        if len(inputs) == 1:
            return [output], compute, total
        return np.split(output, np.cumsum(sizes[:-1])), compute, total

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            rows, compute, size = self._compute([p.inputs for p in batch])
            self.on_batch(size, compute)
            for pending, part in zip(batch, rows):
                self._finish(pending, BatchResult(part, started - pending.enqueued, compute, size))
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

    # -- inline batches, on the event loop ---------------------------------------

    def submit_inline(
        self,
        item: Any,
        deadline: float | None = None,
        prepare: Callable[[Any], np.ndarray] | None = None,
        finish: Callable[[Any, BatchResult], Any] | None = None,
    ) -> asyncio.Future:
        """On the event loop: queue ``item`` for the batch the loop runs in its next turn.

        ``item``: the request's inputs; or, with ``prepare``, the request as it
        arrived (e.g. a serialized message), ``prepare(item)`` giving its
        inputs in the batch's turn. The future gets a :class:`BatchResult`, or
        with ``finish`` what ``finish(item, result)`` returns (also computed in
        the batch's turn), or the exception that stopped the request (one from
        ``prepare`` or ``finish`` goes to that request alone). Preparing and
        answering every request of a batch together, in one tight loop, is
        cheaper on a busy core than the same work done request by request
        between everything else the loop runs (measured in docs/server.md).

        Raises :class:`QueueFull` or :class:`BatcherClosed` at once; cancelling
        the future before its batch runs drops the request.
        """
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if len(self._inline) >= self.max_queue_size:
            raise QueueFull(f"{self.max_queue_size} requests already queued")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = _InlinePending(item, deadline, future, prepare, finish)
        self._inline.append(pending)
        self._inline_items += pending.size
        if self._flush is None:
            self._flush_waits = self.enabled and self._last_inline_batch > 1
            if self._flush_waits:  # callers are concurrent: wait a little for more
                self._flush = loop.call_later(self.max_queue_delay, self._run_inline)
            else:  # nothing to batch with: run in the loop's next turn
                self._flush = loop.call_soon(self._run_inline)
        elif self._flush_waits and self._inline_items >= min(self._last_inline_batch, self.max_batch_size):
            self._flush.cancel()  # as many as last time (or a full batch): they do not wait for the delay
            self._flush, self._flush_waits = loop.call_soon(self._run_inline), False
        return future

    def _run_inline(self) -> None:
        """One batch of the requests queued on the loop (the oldest first); the rest wait for the next turn."""
        pending, self._inline, self._inline_items = self._inline, [], 0
        now = time.perf_counter()
        limit = self.max_batch_size if self.enabled else 1
        batch: list[_InlinePending] = []
        items, expired = 0, 0
        for index, request in enumerate(pending):
            if items >= limit:
                self._inline = pending[index:]
                self._inline_items = sum(r.size for r in self._inline)
                break
            if request.future.done():  # the caller gave up (cancelled)
                continue
            if request.deadline is not None and now >= request.deadline:
                request.future.set_exception(DeadlineExpired(f"deadline passed after {now - request.enqueued:.3f} s in the queue"))
                expired += 1
                continue
            if request.inputs is None:
                try:
                    request.inputs = request.prepare(request.item)  # type: ignore[misc]
                except Exception as error:  # this request's own problem (malformed, refused)
                    request.future.set_exception(error)
                    continue
            batch.append(request)
            items += int(request.inputs.shape[0])
        self._flush = asyncio.get_running_loop().call_soon(self._run_inline) if self._inline else None
        self._flush_waits = False
        self._last_inline_batch = sum(r.size for r in batch)
        if expired:
            self.on_expired(expired)
        if not batch:
            return
        try:
            rows, compute, size = self._compute([r.inputs for r in batch])  # type: ignore[misc]
            self.on_batch(size, compute)
        except Exception as error:  # every request of the batch hears about it; the loop carries on
            log.exception("batch of %d requests failed", len(batch))
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        for request, part in zip(batch, rows):
            if request.future.done():
                continue
            result = BatchResult(part, now - request.enqueued, compute, size)
            if request.finish is None:
                request.future.set_result(result)
                continue
            try:
                answer = request.finish(request.item, result)
            except Exception as error:  # this request's own problem (e.g. its output cannot be encoded)
                request.future.set_exception(error)
            else:
                request.future.set_result(answer)

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
