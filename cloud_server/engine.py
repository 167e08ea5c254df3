"""The inference engine behind the gRPC service: runtime, batchers, limits, metrics.

Three models, one batcher each: ``fer_attention`` (the attention stage; its batch
output packs the attended map with the attention itself, see
:class:`~cloud_server.inference.AttentionOutputs`), ``fer_rest`` (attention and
tail: split tensor to probabilities) and ``fer_classifier`` (the whole network).

The request path is kept short, because at a few hundred microseconds per
request the per-request overhead, not the model, sets the throughput: one
coroutine validates, queues and answers; a light model (the attention stage
under ONNX Runtime) computes in an inline batch on the event loop, with no
thread hand-off; metric children are looked up once; FP32 tensors are not copied
on the way in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
import numpy as np

from shared_model.protocol import (
    ATTENTION_MODEL,
    BATCH_SIZE,
    CLASSIFIER_MODEL,
    COMPUTE_US,
    QUEUE_US,
    SERVER_US,
    pb,
)

from .batching import BatcherClosed, BatchResult, DeadlineExpired, DynamicBatcher, QueueFull
from . import wire
from .inference import (
    AttentionOutputs,
    Buffer,
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
from .runtimes import Runtime, load_runtime

__all__ = ["BatchingSettings", "InferenceEngine"]

OK, CANCELLED, DEADLINE_EXCEEDED, INTERNAL = "OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL"


@dataclass(frozen=True)
class BatchingSettings:
    """Dynamic batching per model: items per batch, longest wait for more, queued requests before RESOURCE_EXHAUSTED."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 512


class InferenceEngine:
    """Runs ``fer_attention``, ``fer_rest`` and ``fer_classifier`` requests; thread-safe.

    ``model``: a :class:`~shared_model.network.FERNet` (served by ``runtime``:
    ``torch``, ``onnx`` with the export in ``onnx_dir`` checked against it, or
    ``auto``), a ready :class:`~cloud_server.runtimes.Runtime`, or None: the
    shipped weights (under ONNX Runtime without importing PyTorch, where it
    serves). Each model computes on its batcher's one worker thread, or, when
    light, in inline batches on the event loop, so whatever the number of
    callers (threads or coroutines) the compute threads are bounded.
    """

    def __init__(
        self,
        model: Any = None,
        device: str = "cpu",
        batching: BatchingSettings | None = None,
        limits: Limits | None = None,
        metrics: ServerMetrics | None = None,
        decode_threads: int = 2,
        runtime: str = "torch",
        onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        served = model if isinstance(model, Runtime) else load_runtime(model, str(device), runtime, onnx_dir, threads)
        self.served = served
        self.runtime = served.name
        self.device = served.device
        self.model = served.model  # the FERNet when PyTorch holds one, else None
        self.config = served.config
        self.fingerprint = served.fingerprint
        self.limits = limits or Limits()
        self.metrics = metrics or ServerMetrics()
        batching = batching or BatchingSettings()
        delay = batching.max_queue_delay_ms / 1000
        self.batchers = {
            name: DynamicBatcher(
                forward, batching.max_batch_size, delay, batching.max_queue_size, f"{name}-batcher",
                inline=name in served.inline, on_batch=partial(self._batched, name),
            )
            for name, forward in served.functions.items()
        }
        # Image decoding (fer_classifier) runs on a few threads of its own, with a bounded backlog.
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="fer-decode")
        self._decode_slots = threading.BoundedSemaphore(batching.max_queue_size)

    def _batched(self, model: str, size: int, compute_seconds: float) -> None:
        self.metrics.compute_seconds.observe(model, compute_seconds)
        self.metrics.batch_size.observe(model, size)

    def _prepare(self, request: pb.ModelInferRequest, raws: Sequence[Buffer]) -> tuple[str, np.ndarray, str | None, tuple[str, ...]]:
        """Validate a request: its model, its input as a float array, the input's encoding and the outputs it wants."""
        model = check_model(request, self.fingerprint)
        outputs = requested_outputs(request)
        if model == CLASSIFIER_MODEL:
            return model, parse_images(request, raws, self.config, self.limits), None, outputs
        inputs, encoding = parse_features(request, raws, self.config, self.limits)
        return model, inputs, encoding, outputs

    def _submit(self, model: str, inputs: np.ndarray, deadline: float | None, finish: Callable[[BatchResult], bytes] | None) -> Future:
        if deadline is not None and time.perf_counter() >= deadline:
            raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was queued")
        try:
            return self.batchers[model].submit(inputs, deadline, finish)
        except QueueFull as error:
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later") from None
        except BatcherClosed as error:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def _submit_inline(self, batcher: DynamicBatcher, inputs: np.ndarray, deadline: float | None) -> asyncio.Future:
        if deadline is not None and time.perf_counter() >= deadline:
            raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was queued")
        try:
            return batcher.submit_inline(inputs, deadline)
        except QueueFull as error:
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later") from None
        except BatcherClosed as error:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def _counted(self, request: pb.ModelInferRequest) -> str:
        return request.model_name if request.model_name in self.batchers else "unknown"

    def infer(self, request: pb.ModelInferRequest, timeout: float | None = None) -> pb.ModelInferResponse:
        """Blocking: validate, run (batched, on the worker thread) and answer one request; raises :class:`InferenceError`."""
        return pb.ModelInferResponse.FromString(self.infer_bytes(request.SerializeToString(), timeout))

    def infer_bytes(self, data: bytes, timeout: float | None = None) -> bytes:
        """Blocking, on the wire: a serialized ``ModelInferRequest`` in, a serialized ``ModelInferResponse`` out."""
        started = time.perf_counter()
        deadline = None if timeout is None else started + timeout
        status = INTERNAL
        model_name = "unknown"
        self.metrics.in_flight_count += 1
        try:
            request, raws = _split(data)
            model_name = self._counted(request)
            model, inputs, encoding, outputs = self._prepare(request, raws)
            respond = partial(self._respond, request, model, encoding=encoding, outputs=outputs, started=started)
            response = _batch_result(self._submit(model, inputs, deadline, respond).result)
            status = OK
            return response
        except InferenceError as error:
            status = error.code.name
            raise
        finally:
            self.metrics.in_flight_count -= 1
            self.metrics.request_done(model_name, status, time.perf_counter() - started if status == OK else None)

    async def infer_async(self, request: pb.ModelInferRequest, deadline: float | None = None) -> pb.ModelInferResponse:
        """On the event loop: as :meth:`infer_bytes_async`, with protobuf messages (for callers off the hot path)."""
        return pb.ModelInferResponse.FromString(await self.infer_bytes_async(request.SerializeToString(), deadline))

    async def infer_bytes_async(self, data: bytes, deadline: float | None = None) -> bytes:
        """The server's hot path, on the event loop: a serialized ``ModelInferRequest`` in, a serialized response out.

        Tensors are not copied on the way in (:mod:`cloud_server.wire`).
        ``deadline`` is a ``time.perf_counter()`` value; a request still queued
        then is dropped before compute. Cancelling the call (the client went
        away) drops it too. A call cancelled after its deadline (gRPC cancels
        the handler then) counts as DEADLINE_EXCEEDED; every DEADLINE_EXCEEDED
        counts as expired. Raises :class:`InferenceError`.
        """
        started = time.perf_counter()
        status = INTERNAL
        model_name = "unknown"
        self.metrics.in_flight_count += 1
        try:
            request, raws = _split(data)
            model_name = self._counted(request)
            if request.model_name == CLASSIFIER_MODEL:  # decoding images is real work: not on the loop
                model, inputs, encoding, outputs = await self._decode(request, raws)
            else:
                model, inputs, encoding, outputs = self._prepare(request, raws)
            batcher = self.batchers[model]
            if batcher.inline:  # computed on this loop in its next turn, with whatever else arrived meanwhile
                try:
                    result = await self._submit_inline(batcher, inputs, deadline)
                except (InferenceError, asyncio.CancelledError):
                    raise
                except Exception as error:
                    raise _batch_error(error) from error
                response = self._respond(request, model, result, encoding=encoding, outputs=outputs, started=started)
            else:
                # The response is built on the batcher's thread, so the event loop only validates, queues and sends.
                respond = partial(self._respond, request, model, encoding=encoding, outputs=outputs, started=started)
                response = await _batch_result_async(asyncio.wrap_future(self._submit(model, inputs, deadline, respond)))
            status = OK
            return response
        except InferenceError as error:
            status = error.code.name
            raise
        except asyncio.CancelledError:
            late = deadline is not None and time.perf_counter() >= deadline - 0.001
            status = DEADLINE_EXCEEDED if late else CANCELLED
            raise
        finally:
            self.metrics.in_flight_count -= 1
            self.metrics.request_done(model_name, status, time.perf_counter() - started if status == OK else None)

    async def _decode(self, request: pb.ModelInferRequest, raws: Sequence[Buffer]) -> tuple[str, np.ndarray, str | None, tuple[str, ...]]:
        if not self._decode_slots.acquire(blocking=False):
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: too many images waiting to be decoded; retry later")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, self._prepare, request, raws)
        finally:
            self._decode_slots.release()

    def _respond(
        self, request: pb.ModelInferRequest, model: str, result: BatchResult, *, encoding: str | None, outputs: tuple[str, ...], started: float
    ) -> bytes:
        if model == ATTENTION_MODEL:
            attention = AttentionOutputs.unpack(result.output, self.config.split_shape)
            response, contents = attention_response(request, attention, encoding or "", self.fingerprint, outputs)
        else:
            response, contents = probabilities_response(request, result.output, self.fingerprint)
        self.metrics.queue_seconds.observe(model, result.queue_seconds)
        parameters = response.parameters
        parameters[QUEUE_US].int64_param = int(result.queue_seconds * 1e6)
        parameters[COMPUTE_US].int64_param = int(result.compute_seconds * 1e6)
        parameters[BATCH_SIZE].int64_param = int(result.batch_size)
        parameters[SERVER_US].int64_param = int((time.perf_counter() - started) * 1e6)
        return wire.infer_response_bytes(response, contents)

    def close(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then stop the batchers and the decoder."""
        for batcher in self.batchers.values():
            batcher.close(timeout)
        self._decoder.shutdown(wait=False, cancel_futures=True)


def _split(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    try:
        return wire.split_infer_request(data)
    except wire.MalformedMessage as error:
        raise InferenceError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {error}") from None


def _batch_error(error: BaseException) -> InferenceError:
    """What a client hears when its batch did not produce its rows (or its response could not be built)."""
    if isinstance(error, InferenceError):
        return error
    if isinstance(error, DeadlineExpired):
        return InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"dropped before compute: {error}")
    if isinstance(error, BatcherClosed):
        return InferenceError(grpc.StatusCode.UNAVAILABLE, str(error))
    return InferenceError(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


def _batch_result(result: Callable[[], bytes]) -> bytes:
    try:
        return result()
    except (Exception, concurrent.futures.CancelledError) as error:
        mapped = _batch_error(error)
        raise mapped from (None if mapped is error else error)


async def _batch_result_async(future: "asyncio.Future[bytes]") -> bytes:
    try:
        return await future
    except asyncio.CancelledError:
        raise
    except Exception as error:
        mapped = _batch_error(error)
        raise mapped from (None if mapped is error else error)
