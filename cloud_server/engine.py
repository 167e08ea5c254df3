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
import io
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
import numpy as np

from shared_model import codec
from shared_model.protocol import (
    ATTENTION_MODEL,
    BATCH_SIZE,
    CLASSIFIER_MODEL,
    COMPUTE_US,
    DATATYPE_BYTES,
    DATATYPE_FP32,
    FEATURES,
    IMAGE,
    QUEUE_US,
    SERVER_US,
    pack_bytes_elements,
    pb,
)

from .batching import BatcherClosed, BatchResult, DeadlineExpired, DynamicBatcher, QueueFull
from . import wire
from .inference import (
    MAX_INPUTS,
    AttentionOutputs,
    Buffer,
    InferenceError,
    Limits,
    attention_response,
    check_model,
    parse_features,
    parse_images,
    probabilities_response,
    refuse_non_finite,
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
    max_queue_delay_ms: float = 6.0
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
        # fer_attention in inline batches takes requests as they arrived: parsed, validated and answered in the batch's turn.
        self._inline_attention = self.batchers[ATTENTION_MODEL] if ATTENTION_MODEL in served.inline else None
        self._plain_shape = [1, *self.config.split_shape]
        self._plain_bytes = 4 * math.prod(self._plain_shape)
        # How one face's request ends, as UINT8, FP16 or FP32 (the first is the plain request's): tried first
        self._face_layouts = tuple(wire.TrailingTensor(self._plain_bytes // 4 * width) for width in (4, 1, 2))
        fixed = pb.ModelInferResponse(model_name=ATTENTION_MODEL, model_version=self.fingerprint)
        fixed.outputs.add(name=FEATURES, datatype=DATATYPE_FP32, shape=self._plain_shape)
        self._plain_prefix = fixed.SerializeToString()
        # Image decoding (fer_classifier) runs on a few threads of its own, with a bounded backlog.
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="fer-decode")
        self._decode_slots = threading.BoundedSemaphore(batching.max_queue_size)

    def warm_up(self) -> None:
        """Do once, before serving, the work of one request per served model, off the metrics: a first
        request pays one-off costs (here: loading the image decoder and starting the decode thread; the
        first ``fer_classifier`` answer took 47.6 ms of server time against 5.9-10.5 for the next three,
        ``scripts/first-requests.py``), which would
        otherwise fall on a client's first face and mislead any client that times the server, as auto does."""
        size = self.config.input_size
        for name, forward in self.served.functions.items():
            if name == CLASSIFIER_MODEL:
                request = pb.ModelInferRequest(model_name=name)
                request.inputs.add(name=IMAGE, datatype=DATATYPE_BYTES, shape=[1])
                raws = [memoryview(pack_bytes_elements([_blank_jpeg(size)]))]
                inputs = self._decoder.submit(parse_images, request, raws, self.config, self.limits).result()
            else:
                inputs = np.zeros((1, *self.config.split_shape), dtype=np.float32)
            forward(inputs)

    def _batched(self, model: str, size: int, compute_seconds: float) -> None:
        self.metrics.compute_seconds.observe(model, compute_seconds)
        self.metrics.batch_size.observe(model, size)

    def _prepare(self, request: pb.ModelInferRequest, raws: Sequence[Buffer]) -> tuple[str, np.ndarray, str | None, tuple[str, ...]]:
        """Validate a request: its model, its input as a float array, the input's encoding and the outputs it wants."""
        model = check_model(request, self.fingerprint)
        outputs = requested_outputs(request)
        if model == CLASSIFIER_MODEL:
            return model, parse_images(request, raws, self.config, self.limits), None, outputs
        inputs, encoding = parse_features(request, raws, self.config, self.limits, check_finite=model not in self.served.checks_finite)
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

    def _submit_inline(self, batcher: DynamicBatcher, item: Any, deadline: float | None, **hooks: Any) -> asyncio.Future:
        if deadline is not None and time.perf_counter() >= deadline:
            raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was queued")
        try:
            return batcher.submit_inline(item, deadline, **hooks)
        except QueueFull as error:
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later") from None
        except BatcherClosed as error:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def _counted(self, request: pb.ModelInferRequest) -> str:
        return request.model_name if request.model_name in self.batchers else "unknown"

    def count_refusal(self, data: bytes, status: str) -> None:
        """A serialized request the service refused before the engine saw it (e.g. while draining), counted like the others."""
        try:
            model_name = self._counted(_split(data)[0])
        except InferenceError:
            model_name = "unknown"
        self.metrics.request_done(model_name, status)

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

        A request for ``fer_attention`` computed inline (``model_name`` first,
        as protobuf serializes it) is queued as it arrived and parsed,
        validated and answered in its batch's turn; any other takes the general
        path, which parses it here.
        """
        started = time.perf_counter()
        status = INTERNAL
        model_name = "unknown"
        self.metrics.in_flight_count += 1
        try:
            inline = self._inline_attention
            if inline is not None and data.startswith(_ATTENTION_FIRST):
                model_name = ATTENTION_MODEL
                try:  # awaited here, not in a coroutine of its own: one frame less per request in flight
                    response = await self._submit_inline(inline, _Arrival(data, started), deadline, prepare=self._prepare_arrival, finish=self._finish_arrival)
                except _OtherModel as other:  # model_name given again further on (the last one counts)
                    model_name = self._counted(other.request)
                    response = await self._general(other.request, other.raws, deadline, started)
                except (InferenceError, asyncio.CancelledError):
                    raise
                except Exception as error:
                    raise _batch_error(error) from error
            else:
                request, raws = self._split_face(data)
                model_name = self._counted(request)
                response = await self._general(request, raws, deadline, started)
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

    async def _general(self, request: pb.ModelInferRequest, raws: Sequence[Buffer], deadline: float | None, started: float) -> bytes:
        if request.model_name == CLASSIFIER_MODEL:  # decoding images is real work: not on the loop
            model, inputs, encoding, outputs = await self._decode(request, raws)
        else:
            model, inputs, encoding, outputs = self._prepare(request, raws)
        batcher = self.batchers[model]
        if batcher.inline:
            result = await self._inline_result(batcher, inputs, deadline)
            return self._respond(request, model, result, encoding=encoding, outputs=outputs, started=started)
        # The response is built on the batcher's thread, so the event loop only validates, queues and sends.
        respond = partial(self._respond, request, model, encoding=encoding, outputs=outputs, started=started)
        return await _batch_result_async(asyncio.wrap_future(self._submit(model, inputs, deadline, respond)))

    async def _inline_result(self, batcher: DynamicBatcher, item: Any, deadline: float | None, **hooks: Any) -> Any:
        """What an inline batch answers for ``item``: computed on this loop in its next turn, with whatever else arrived meanwhile."""
        try:
            return await self._submit_inline(batcher, item, deadline, **hooks)
        except (InferenceError, asyncio.CancelledError, _OtherModel):
            raise
        except Exception as error:
            raise _batch_error(error) from error

    def _prepare_arrival(self, arrival: "_Arrival") -> np.ndarray:
        """In an inline batch's turn: parse and validate a serialized fer_attention request; its input."""
        request, raws = self._split_face(arrival.data)
        arrival.request = request
        if request.model_name != ATTENTION_MODEL:
            raise _OtherModel(request, raws)
        if self._is_plain(request, raws):  # what the full validation would accept unchanged, checked in a few steps
            arrival.encoding, arrival.outputs, arrival.plain = codec.FP32, (FEATURES,), True
            return np.frombuffer(raws[0], dtype="<f4").reshape(self._plain_shape)
        _, inputs, arrival.encoding, arrival.outputs = self._prepare(request, raws)
        return inputs

    def _split_face(self, data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
        """A request that ends in one face's tensor, split in a few steps; any other, walked."""
        for layout in self._face_layouts:
            if (split := wire.split_trailing_tensor(data, layout)) is not None:
                return split
        return _split(data)

    def _is_plain(self, request: pb.ModelInferRequest, raws: Sequence[Buffer]) -> bool:
        """The common request: one FP32 face ``[1, C, H, W]`` in raw contents, this version or none, no outputs named."""
        inputs = request.inputs
        return (
            len(inputs) == 1 and len(raws) == 1 and not request.outputs and request.model_version in ("", self.fingerprint)
            and inputs[0].name == FEATURES and inputs[0].datatype == DATATYPE_FP32 and list(inputs[0].shape) == self._plain_shape
            and memoryview(raws[0]).nbytes == self._plain_bytes
        )

    def _finish_arrival(self, arrival: "_Arrival", result: BatchResult) -> bytes:
        """In an inline batch's turn: the serialized response to one request of the batch."""
        if not arrival.plain:
            return self._respond(arrival.request, ATTENTION_MODEL, result, encoding=arrival.encoding, outputs=arrival.outputs, started=arrival.started)  # type: ignore[arg-type]
        # The plain request's answer: its fixed part serialized once, then what is its own (merged by any parser).
        refuse_non_finite(result.output[:, -1])
        own = pb.ModelInferResponse(id=arrival.request.id)  # type: ignore[union-attr]
        features = result.output[0, : self._plain_bytes // 4]
        return self._timed_bytes(own, [features.data], ATTENTION_MODEL, result, arrival.started, self._plain_prefix)

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
        if model in self.served.checks_finite:
            refuse_non_finite(result.output[:, -1])
        if model == ATTENTION_MODEL:
            attention = AttentionOutputs.unpack(result.output, self.config.split_shape)
            response, contents = attention_response(request, attention, encoding or "", self.fingerprint, outputs)
        else:
            response, contents = probabilities_response(request, result.output, self.fingerprint)
        return self._timed_bytes(response, contents, model, result, started)

    def _timed_bytes(
        self, response: pb.ModelInferResponse, contents: list[Buffer], model: str, result: BatchResult, started: float, prefix: bytes = b""
    ) -> bytes:
        """``response`` with the server's timings as parameters (and in the metrics), serialized with its tensors."""
        self.metrics.queue_seconds.observe(model, result.queue_seconds)
        parameters = response.parameters
        parameters[QUEUE_US].int64_param = int(result.queue_seconds * 1e6)
        parameters[COMPUTE_US].int64_param = int(result.compute_seconds * 1e6)
        parameters[BATCH_SIZE].int64_param = int(result.batch_size)
        parameters[SERVER_US].int64_param = int((time.perf_counter() - started) * 1e6)
        return wire.infer_response_bytes(response, contents, prefix)

    def close(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then stop the batchers and the decoder."""
        for batcher in self.batchers.values():
            batcher.close(timeout)
        self._decoder.shutdown(wait=False, cancel_futures=True)


# How a serialized request naming fer_attention begins: model_name (field 1) comes first as protobuf writes it.
_ATTENTION_FIRST = b"\x0a" + bytes((len(ATTENTION_MODEL),)) + ATTENTION_MODEL.encode()


class _Arrival:
    """A serialized fer_attention request on its way through an inline batch (parsed in the batch's turn)."""

    __slots__ = ("data", "started", "request", "encoding", "outputs", "plain")

    def __init__(self, data: bytes, started: float) -> None:
        self.data, self.started = data, started
        self.request: pb.ModelInferRequest | None = None
        self.encoding: str | None = None
        self.outputs: tuple[str, ...] = ()
        self.plain = False  # the common request (InferenceEngine._is_plain)


class _OtherModel(Exception):
    """A request that began like a fer_attention one but names another model: it goes the general way."""

    def __init__(self, request: pb.ModelInferRequest, raws: list[memoryview]) -> None:
        super().__init__(request.model_name)
        self.request, self.raws = request, raws


def _blank_jpeg(size: int) -> bytes:
    """A gray face-sized JPEG (Pillow: what the server decodes images with)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="JPEG")
    return buffer.getvalue()


def _split(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    try:
        return wire.split_infer_request(data, max_raws=MAX_INPUTS)
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
