"""The inference engine behind the gRPC service: model, batchers, limits, metrics.

Three models, one batcher each: ``fer_attention`` (the attention stage; its batch
output packs the attended map with the attention itself, see
:class:`~cloud_server.inference.AttentionOutputs`), ``fer_rest`` (attention and
tail: split tensor to probabilities) and ``fer_classifier`` (the whole network).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Callable, Iterator

import grpc
import torch
from torch import Tensor

from shared_model.checkpoint import model_fingerprint
from shared_model.network import FERNet
from shared_model.protocol import (
    ATTENTION_MODEL,
    BATCH_SIZE,
    CLASSIFIER_MODEL,
    COMPUTE_US,
    QUEUE_US,
    SERVER_US,
    pb,
    set_parameters,
)

from .batching import BatcherClosed, BatchResult, DeadlineExpired, DynamicBatcher, QueueFull
from .inference import (
    AttentionOutputs,
    InferenceError,
    Limits,
    attention_response,
    check_model,
    parse_features,
    parse_images,
    probabilities_response,
    requested_outputs,
)
from .metrics import ServerMetrics
from .runtimes import batch_functions


@dataclass(frozen=True)
class BatchingSettings:
    """Dynamic batching per model: items per batch, longest wait for more, queued requests before RESOURCE_EXHAUSTED."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 512


class InferenceEngine:
    """Runs ``fer_attention``, ``fer_rest`` and ``fer_classifier`` requests; thread-safe.

    Each model computes on its batcher's one worker thread, so whatever the number
    of callers (threads or coroutines) the compute threads are bounded.
    """

    def __init__(
        self,
        model: FERNet,
        device: torch.device | str = "cpu",
        batching: BatchingSettings | None = None,
        limits: Limits | None = None,
        metrics: ServerMetrics | None = None,
        decode_threads: int = 2,
        runtime: str = "torch",
        onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.fingerprint = model_fingerprint(model)
        self.limits = limits or Limits()
        self.metrics = metrics or ServerMetrics()
        batching = batching or BatchingSettings()
        delay = batching.max_queue_delay_ms / 1000
        self.runtime, forwards = batch_functions(self.model, self.device, runtime, self.fingerprint, onnx_dir, threads)
        self.batchers = {
            name: DynamicBatcher(forward, batching.max_batch_size, delay, batching.max_queue_size, f"{name}-batcher")
            for name, forward in forwards.items()
        }
        # Image decoding (fer_classifier) runs on a few threads of its own, with a bounded backlog.
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="fer-decode")
        self._decode_slots = threading.BoundedSemaphore(batching.max_queue_size)

    def _prepare(self, request: pb.ModelInferRequest) -> tuple[str, Tensor, str | None, tuple[str, ...]]:
        """Validate a request: its model, its input as a float tensor, the input's encoding and the outputs it wants."""
        model = check_model(request, self.fingerprint)
        outputs = requested_outputs(request)
        if model == CLASSIFIER_MODEL:
            return model, parse_images(request, self.config, self.limits), None, outputs
        inputs, encoding = parse_features(request, self.config, self.limits)
        return model, inputs, encoding, outputs

    def _submit(self, model: str, inputs: Tensor, deadline: float | None, finish: Callable[[BatchResult], pb.ModelInferResponse]) -> Future:
        if deadline is not None and time.perf_counter() >= deadline:
            raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was queued")
        try:
            return self.batchers[model].submit(inputs, deadline, finish)
        except QueueFull as error:
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later") from None
        except BatcherClosed as error:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def infer(self, request: pb.ModelInferRequest, timeout: float | None = None) -> pb.ModelInferResponse:
        """Blocking: validate, run (batched) and answer one request; raises :class:`InferenceError`."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._accounted(request, deadline) as started:
            model, inputs, encoding, outputs = self._prepare(request)
            respond = partial(self._respond, request, model, encoding=encoding, outputs=outputs, started=started)
            return _batch_result(self._submit(model, inputs, deadline, respond).result)

    async def infer_async(self, request: pb.ModelInferRequest, deadline: float | None = None) -> pb.ModelInferResponse:
        """On the event loop: as :meth:`infer`, without blocking the loop.

        ``deadline`` is a ``time.perf_counter()`` value; a request still queued
        then is dropped before compute. Cancelling the call (the client went
        away) drops it too.
        """
        with self._accounted(request, deadline) as started:
            if request.model_name == CLASSIFIER_MODEL:  # decoding images is real work: not on the loop
                prepared = await self._decode(request)
            else:
                prepared = self._prepare(request)
            model, inputs, encoding, outputs = prepared
            # The response is built on the batcher's thread, so the event loop only validates, queues and sends.
            respond = partial(self._respond, request, model, encoding=encoding, outputs=outputs, started=started)
            return await _batch_result_async(asyncio.wrap_future(self._submit(model, inputs, deadline, respond)))

    async def _decode(self, request: pb.ModelInferRequest) -> tuple[str, Tensor, str | None, tuple[str, ...]]:
        if not self._decode_slots.acquire(blocking=False):
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: too many images waiting to be decoded; retry later")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, self._prepare, request)
        finally:
            self._decode_slots.release()

    @contextmanager
    def _accounted(self, request: pb.ModelInferRequest, deadline: float | None) -> Iterator[float]:
        """Count the request in the metrics by model and final status; yields its start time.

        A call cancelled after its deadline (gRPC cancels the handler then) counts
        as DEADLINE_EXCEEDED; every DEADLINE_EXCEEDED counts as expired.
        """
        started = time.perf_counter()
        model = request.model_name if request.model_name in self.batchers else "unknown"
        status = grpc.StatusCode.INTERNAL
        self.metrics.in_flight.inc()
        try:
            yield started
            status = grpc.StatusCode.OK
        except InferenceError as error:
            status = error.code
            raise
        except asyncio.CancelledError:
            late = deadline is not None and time.perf_counter() >= deadline - 0.001
            status = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            raise
        finally:
            self.metrics.in_flight.dec()
            if status == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.metrics.expired.labels(model).inc()
            self.metrics.requests.labels(model, status.name).inc()
            if status == grpc.StatusCode.OK:
                self.metrics.request_seconds.labels(model).observe(time.perf_counter() - started)

    def _respond(
        self, request: pb.ModelInferRequest, model: str, result: BatchResult, *, encoding: str | None, outputs: tuple[str, ...], started: float
    ) -> pb.ModelInferResponse:
        if model == ATTENTION_MODEL:
            attention = AttentionOutputs.unpack(result.output, self.config.split_shape)
            response = attention_response(request, attention, encoding or "", self.fingerprint, outputs)
        else:
            response = probabilities_response(request, result.output, self.fingerprint)
        self.metrics.queue_seconds.labels(model).observe(result.queue_seconds)
        self.metrics.compute_seconds.labels(model).observe(result.compute_seconds)
        self.metrics.batch_size.labels(model).observe(result.batch_size)
        set_parameters(
            response.parameters,
            {
                QUEUE_US: int(result.queue_seconds * 1e6),
                COMPUTE_US: int(result.compute_seconds * 1e6),
                BATCH_SIZE: int(result.batch_size),
                SERVER_US: int((time.perf_counter() - started) * 1e6),
            },
        )
        return response

    def close(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then stop the batchers and the decoder."""
        for batcher in self.batchers.values():
            batcher.close(timeout)
        self._decoder.shutdown(wait=False, cancel_futures=True)


def _batch_error(error: BaseException) -> InferenceError:
    """What a client hears when its batch did not produce its rows (or its response could not be built)."""
    if isinstance(error, InferenceError):
        return error
    if isinstance(error, DeadlineExpired):
        return InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"dropped before compute: {error}")
    if isinstance(error, BatcherClosed):
        return InferenceError(grpc.StatusCode.UNAVAILABLE, str(error))
    return InferenceError(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


def _batch_result(result: Callable[[], pb.ModelInferResponse]) -> pb.ModelInferResponse:
    try:
        return result()
    except (Exception, concurrent.futures.CancelledError) as error:
        mapped = _batch_error(error)
        raise mapped from (None if mapped is error else error)


async def _batch_result_async(future: "asyncio.Future[pb.ModelInferResponse]") -> pb.ModelInferResponse:
    try:
        return await future
    except asyncio.CancelledError:
        raise
    except Exception as error:
        mapped = _batch_error(error)
        raise mapped from (None if mapped is error else error)
