"""Dynamic batching: concurrent requests grouped into one forward pass.

As inference servers do it: a worker takes the oldest request, waits at most
``max_queue_delay`` for more, stops at ``max_batch_size`` items, runs them as
one batch and hands each request its slice. It waits only while another request
is already on its way into the queue: a lone request (concurrency 1) is not
held for the full delay, while under load the queue fills during each forward
pass and batches form by themselves. Without batching (max batch 1 or no delay)
requests run directly on the caller's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


class QueueFull(Exception):
    """More requests are waiting than the server accepts; the client should back off."""


class BatcherClosed(Exception):
    """The batcher was stopped (the server is draining)."""


@dataclass(frozen=True)
class BatchResult:
    output: Tensor
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass
class _Pending:
    inputs: Tensor
    future: Future
    enqueued: float


class DynamicBatcher:
    """Run ``forward`` on batches of concatenated requests (each request: a tensor with a batch dim)."""

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        max_batch_size: int = 32,
        max_queue_delay: float = 0.002,
        max_queue_size: int = 512,
        name: str = "batcher",
    ) -> None:
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.enabled = max_batch_size > 1 and max_queue_delay > 0
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_queue_size)
        self._lock = threading.Lock()
        self._arriving = 0  # callers inside infer() whose request the worker has not taken yet
        self._closed = False
        self._worker: threading.Thread | None = None
        if self.enabled:
            self._worker = threading.Thread(target=self._run, name=name, daemon=True)
            self._worker.start()

    def infer(self, inputs: Tensor) -> BatchResult:
        """Blocking: the output rows belonging to ``inputs`` and the timings of its batch."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if not self.enabled:
            started = time.perf_counter()
            with torch.inference_mode():
                output = self.forward(inputs)
            return BatchResult(output, 0.0, time.perf_counter() - started, inputs.shape[0])
        pending = _Pending(inputs, Future(), time.perf_counter())
        with self._lock:
            self._arriving += 1
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            with self._lock:
                self._arriving -= 1
            raise QueueFull(f"{self._queue.maxsize} requests already queued") from None
        return pending.future.result()

    def _take(self, timeout: float | None) -> _Pending | None:
        """Next queued request (None is the stop signal); raises queue.Empty on timeout."""
        pending = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        if pending is not None:
            with self._lock:
                self._arriving -= 1
        return pending

    def _more_on_the_way(self) -> bool:
        with self._lock:
            return self._arriving > 0

    def _collect(self) -> list[_Pending] | None:
        first = self._take(None)
        if first is None:
            return None
        batch, items = [first], first.inputs.shape[0]
        deadline = first.enqueued + self.max_queue_delay
        while items < self.max_batch_size and self._more_on_the_way():
            try:
                pending = self._take(deadline - time.perf_counter())
            except queue.Empty:
                break
            if pending is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            batch.append(pending)
            items += pending.inputs.shape[0]
        return batch

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    output = self.forward(torch.cat([p.inputs for p in batch]))
            except Exception as error:  # every waiting request must hear about it
                for pending in batch:
                    pending.future.set_exception(error)
                continue
            compute = time.perf_counter() - started
            rows = output.split([p.inputs.shape[0] for p in batch])
            size = output.shape[0]
            for pending, part in zip(batch, rows):
                pending.future.set_result(BatchResult(part, started - pending.enqueued, compute, size))

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
