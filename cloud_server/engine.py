"""The inference engine behind the gRPC service: one path for every request, parse -> queue -> respond.

- **parse**: the serialized request is split into its small fields, parsed by
  protobuf, and views of its tensor bytes (:mod:`cloud_server.wire`: tensors are
  not copied on the way in), then validated into its model's input array
  (:mod:`cloud_server.inference`). ``fer_classifier``'s images are decoded on a
  few threads of their own, with a bounded backlog. Where the
  :class:`~cloud_server.batching.LoopBatcher` computes ``fer_attention``, only
  the first bytes are read on arrival (they name the model); the rest of the
  parse runs in the batch's turn, for all its requests together, which is
  cheaper on a busy core than the same work interleaved with the loop's other
  callbacks request by request.
- **queue**: the input goes to its model's batcher. A model light enough to
  compute on the event loop (the runtime says which: the attention stage in
  NumPy) has a :class:`~cloud_server.batching.LoopBatcher`, the others a
  :class:`~cloud_server.batching.ThreadBatcher` (one worker thread each), so the
  threads that compute are bounded whatever the number of callers.
- **respond**: in its batch's turn (on the loop, or on the worker thread), each
  request's rows become its serialized response, with the server's timings.

:meth:`InferenceEngine.infer` is that path, and the only way in: what a request
cost and how it ended is counted there, once.

The common request (one FP32 face ``[1, C, H, W]`` for ``fer_attention``, naming
no outputs, this version or none) is what the full validation would accept
unchanged: it is checked in a few comparisons, and its answer is the part every
such answer shares, serialized once at start, followed by what is its own (id,
timings, tensor); a parser merges the two.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Sequence

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

from . import wire
from .batching import BatchError, BatchFailed, BatchResult, DeadlineExpired, LoopBatcher, QueueFull, ThreadBatcher
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

__all__ = ["DRAINING", "BatchingSettings", "Request", "InferenceEngine"]

OK, CANCELLED, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN_MODEL = "OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "unknown"
DRAINING = "server is draining; send requests to another replica"


@dataclass(frozen=True)
class BatchingSettings:
    """Dynamic batching per model: items per batch, longest wait for more, queued requests before RESOURCE_EXHAUSTED."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 6.0
    max_queue_size: int = 512


class Request:
    """A parsed request on its way through the engine: what it asked for, and its input once validated."""

    __slots__ = ("data", "message", "raws", "model", "inputs", "encoding", "outputs", "plain", "started")

    def __init__(self, data: bytes, model: str, started: float) -> None:
        self.data, self.model, self.started = data, model, started
        self.message: pb.ModelInferRequest | None = None  # None until split (for a deferred request: in its batch's turn)
        self.raws: Sequence[Buffer] = ()
        self.inputs: np.ndarray | None = None
        self.encoding: str | None = None
        self.outputs: tuple[str, ...] = ()
        self.plain = False


class InferenceEngine:
    """Runs ``fer_attention``, ``fer_rest`` and ``fer_classifier`` requests on the event loop of a grpc.aio server.

    ``model``: a ready :class:`~cloud_server.runtimes.Runtime`, a
    :class:`~shared_model.network.FERNet` (served by ``runtime``: ``torch``,
    ``onnx`` with the export in ``onnx_dir`` checked against it, or ``auto``), or
    None: the shipped weights (under ONNX Runtime without importing PyTorch,
    where it serves).
    """

    def __init__(
        self, model: Any = None, device: str = "cpu", batching: BatchingSettings | None = None, limits: Limits | None = None,
        metrics: ServerMetrics | None = None, decode_threads: int = 2, runtime: str = "torch", onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        served = model if isinstance(model, Runtime) else load_runtime(model, str(device), runtime, onnx_dir, threads)
        self.served = served
        self.runtime, self.device, self.model = served.name, served.device, served.model  # model: the FERNet PyTorch holds, or None
        self.config, self.fingerprint = served.config, served.fingerprint
        self.limits = limits or Limits()
        self.metrics = metrics or ServerMetrics()
        self.draining = False
        batching = batching or BatchingSettings()
        self.batchers = {name: self._batcher(name, forward, batching) for name, forward in served.functions.items()}
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="fer-decode")
        self._decode_slots = threading.BoundedSemaphore(batching.max_queue_size)
        self._plain_shape = [1, *self.config.split_shape]
        self._plain_bytes = 4 * math.prod(self._plain_shape)
        # How one face's request ends, as FP32 (the plain request), UINT8 or FP16: split in a few steps
        self._face_layouts = tuple(wire.TrailingTensor(self._plain_bytes // 4 * width) for width in (4, 1, 2))
        self._plain_prefix = _plain_prefix(self._plain_shape, self.fingerprint)
        self._plain_served = ATTENTION_MODEL in served.checks_finite  # the plain request skips the finite check its runtime does
        # fer_attention on the loop: its requests are split and validated in their batch's turn, together
        self._deferred = isinstance(self.batchers.get(ATTENTION_MODEL), LoopBatcher)

    def _batcher(self, name: str, forward: Any, settings: BatchingSettings) -> LoopBatcher | ThreadBatcher:
        """The batcher of one model: on the event loop where the runtime says it is light, else on a thread of its own."""
        common: dict[str, Any] = dict(
            respond=self._respond, max_batch_size=settings.max_batch_size, max_queue_delay=settings.max_queue_delay_ms / 1000,
            max_queue_size=settings.max_queue_size, on_batch=partial(self._batched, name),
        )
        if name in self.served.inline:
            return LoopBatcher(forward, prepare=self._prepare_in_turn, **common)
        return ThreadBatcher(forward, name=f"{name}-batcher", **common)

    def warm_up(self) -> None:
        """Before serving, off the metrics: one input per served model through its batch function (an image
        decoded for ``fer_classifier``), so that a first request's one-off costs (loading the image decoder,
        starting its thread) fall on no client, least of all on one that times the server, as auto does."""
        for name, forward in self.served.functions.items():
            if name == CLASSIFIER_MODEL:
                request = pb.ModelInferRequest(model_name=name)
                request.inputs.add(name=IMAGE, datatype=DATATYPE_BYTES, shape=[1])
                raws = [memoryview(pack_bytes_elements([_blank_jpeg(self.config.input_size)]))]
                inputs = self._decoder.submit(parse_images, request, raws, self.config, self.limits).result()
            else:
                inputs = np.zeros(self._plain_shape, dtype=np.float32)
            forward(inputs)

    def start_draining(self) -> None:
        """From now on new requests are refused with UNAVAILABLE (and counted); those queued are answered."""
        self.draining = True

    async def infer(self, data: bytes, deadline: float | None) -> bytes:
        """A serialized ``ModelInferRequest`` in, a serialized ``ModelInferResponse`` out, on the event loop.

        ``deadline`` is a ``time.perf_counter()`` value: a request still queued
        then is dropped before compute. Cancelling the call (the client went
        away) drops it too; one cancelled after its deadline (gRPC cancels the
        handler then) counts as DEADLINE_EXCEEDED. Raises :class:`InferenceError`.
        """
        started = time.perf_counter()
        model, status = UNKNOWN_MODEL, INTERNAL
        self.metrics.in_flight_count += 1
        try:
            request = self._arrive(data, started)
            model = request.model
            if self.draining:
                raise InferenceError(grpc.StatusCode.UNAVAILABLE, DRAINING)
            if request.message is not None:  # split on arrival: validated now
                await self._parse_now(request)
            try:
                response = await self._queue(request, deadline)
            except _OtherModel:  # deferred, but model_name came again further on (the last one counts): the usual way
                request.model = model = self._route(request)
                await self._parse_now(request)
                response = await self._queue(request, deadline)
            status = OK
            return response
        except BatchError as error:  # refused by the batcher, or its batch failed (logged there)
            refusal = _refusal(error)
            status = refusal.code.name
            raise refusal from None
        except InferenceError as error:
            status = error.code.name
            raise
        except asyncio.CancelledError:
            status = DEADLINE_EXCEEDED if deadline is not None and time.perf_counter() >= deadline - 0.001 else CANCELLED
            raise
        finally:
            self.metrics.in_flight_count -= 1
            self.metrics.request_done(model, status, time.perf_counter() - started if status == OK else None)

    # -- parse ----------------------------------------------------------------------

    def _arrive(self, data: bytes, started: float) -> Request:
        """On arrival, the light part of parsing: which model, from the first bytes where that is enough.

        A request that begins by naming ``fer_attention`` (``model_name`` first,
        as protobuf writes it), computed on the loop, is split and validated in
        its batch's turn (:meth:`_prepare_in_turn`), with the rest of its batch;
        any other is split here (:meth:`_route`).
        """
        request = Request(data, ATTENTION_MODEL, started)
        if not (self._deferred and data.startswith(_ATTENTION_FIRST)):
            request.model = self._route(request)
        return request

    def _route(self, request: Request) -> str:
        """``request`` split, and its model (as counted in the metrics)."""
        request.message, request.raws = message, _ = self._split(request.data)
        return message.model_name if message.model_name in self.batchers else UNKNOWN_MODEL

    def _prepare_in_turn(self, request: Request) -> np.ndarray:
        """In its batch's turn: a deferred request split and validated; its input."""
        request.message, request.raws = message, raws = self._split(request.data)
        if message.model_name != ATTENTION_MODEL:
            raise _OtherModel(message.model_name)
        self._parse(request)
        return request.inputs  # type: ignore[return-value]

    def _split(self, data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
        """A request that ends in one face's tensor, split in a few steps; any other, walked field by field."""
        for layout in self._face_layouts:
            if (split := wire.split_trailing_tensor(data, layout)) is not None:
                return split
        try:
            return wire.split_infer_request(data, max_raws=MAX_INPUTS)
        except wire.MalformedMessage as error:
            raise InferenceError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {error}") from None

    def _parse(self, request: Request) -> None:
        """The split request validated: its model, input, encoding and outputs (``inputs`` stays None for images)."""
        message, raws = request.message, request.raws
        assert message is not None
        if self._is_plain(message, raws):
            request.inputs = np.frombuffer(raws[0], dtype="<f4").reshape(self._plain_shape)
            request.model, request.encoding, request.outputs, request.plain = ATTENTION_MODEL, codec.FP32, (FEATURES,), True
            return
        request.model = model = check_model(message, self.fingerprint)
        request.outputs = requested_outputs(message)
        if model != CLASSIFIER_MODEL:
            check_finite = model not in self.served.checks_finite
            request.inputs, request.encoding = parse_features(message, raws, self.config, self.limits, check_finite=check_finite)

    async def _parse_now(self, request: Request) -> None:
        """A request split on arrival, validated now (its images decoded off the loop)."""
        self._parse(request)
        if request.inputs is None:
            request.inputs = await self._decode(request.message, request.raws)  # type: ignore[arg-type]

    def _is_plain(self, message: pb.ModelInferRequest, raws: Sequence[Buffer]) -> bool:
        """The common request, which the full validation would accept unchanged, on a runtime that flags non-finite inputs."""
        inputs = message.inputs
        return (
            self._plain_served and message.model_name == ATTENTION_MODEL and len(inputs) == 1 and len(raws) == 1 and not message.outputs
            and message.model_version in ("", self.fingerprint) and inputs[0].name == FEATURES and inputs[0].datatype == DATATYPE_FP32 and list(inputs[0].shape) == self._plain_shape
            and memoryview(raws[0]).nbytes == self._plain_bytes
        )

    async def _decode(self, message: pb.ModelInferRequest, raws: Sequence[Buffer]) -> np.ndarray:
        """The images of a ``fer_classifier`` request as network input, decoded on the decoder's threads."""
        if not self._decode_slots.acquire(blocking=False):
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: too many images waiting to be decoded; retry later")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, parse_images, message, raws, self.config, self.limits)
        finally:
            self._decode_slots.release()

    # -- queue ----------------------------------------------------------------------

    def _queue(self, request: Request, deadline: float | None) -> Awaitable[bytes]:
        """``request`` queued in its model's batcher: what its batch's turn will answer."""
        if deadline is not None and time.perf_counter() >= deadline:
            raise InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was queued")
        batcher = self.batchers[request.model]
        future = batcher.submit(request.inputs, deadline, request)  # type: ignore[arg-type]  (QueueFull, BatcherClosed)
        return future if isinstance(batcher, LoopBatcher) else asyncio.wrap_future(future)

    def _batched(self, model: str, size: int, compute_seconds: float) -> None:
        self.metrics.compute_seconds.observe(model, compute_seconds)
        self.metrics.batch_size.observe(model, size)

    # -- respond (in the batch's turn) -------------------------------------------------

    def _respond(self, request: Request, result: BatchResult) -> bytes:
        """``request``'s rows of its batch's output as its serialized response, with the server's timings."""
        model, message = request.model, request.message
        if model in self.served.checks_finite:
            refuse_non_finite(result.output[:, -1])
        prefix = b""
        if request.plain:  # the answer's shared part is the prefix
            response, contents, prefix = pb.ModelInferResponse(id=message.id), [result.output[0, : self._plain_bytes // 4].data], self._plain_prefix
        elif model == ATTENTION_MODEL:
            attention = AttentionOutputs.unpack(result.output, self.config.split_shape)
            response, contents = attention_response(message, attention, request.encoding or "", self.fingerprint, request.outputs)
        else:
            response, contents = probabilities_response(message, result.output, self.fingerprint)
        self.metrics.queue_seconds.observe(model, result.queue_seconds)
        parameters = response.parameters
        parameters[QUEUE_US].int64_param = int(result.queue_seconds * 1e6)
        parameters[COMPUTE_US].int64_param = int(result.compute_seconds * 1e6)
        parameters[BATCH_SIZE].int64_param = int(result.batch_size)
        parameters[SERVER_US].int64_param = int((time.perf_counter() - request.started) * 1e6)
        return wire.infer_response_bytes(response, contents, prefix)

    def close(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then stop the batchers and the decoder."""
        for batcher in self.batchers.values():
            batcher.close(timeout)
        self._decoder.shutdown(wait=False, cancel_futures=True)


# How a serialized request naming fer_attention begins: model_name (field 1) comes first as protobuf writes it.
_ATTENTION_FIRST = b"\x0a" + bytes((len(ATTENTION_MODEL),)) + ATTENTION_MODEL.encode()


class _OtherModel(Exception):
    """A deferred request that began like a fer_attention one but names another model further on."""


def _plain_prefix(shape: list[int], fingerprint: str) -> bytes:
    """What every answer to the plain request shares (model, version, output tensor), serialized."""
    fixed = pb.ModelInferResponse(model_name=ATTENTION_MODEL, model_version=fingerprint)
    fixed.outputs.add(name=FEATURES, datatype=DATATYPE_FP32, shape=shape)
    return fixed.SerializeToString()


def _blank_jpeg(size: int) -> bytes:
    """A gray face-sized JPEG (Pillow: what the server decodes images with)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="JPEG")
    return buffer.getvalue()


def _refusal(error: BatchError) -> InferenceError:
    """What a client hears when the batcher did not answer its request."""
    if isinstance(error, QueueFull):
        return InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later")
    if isinstance(error, DeadlineExpired):
        return InferenceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"dropped before compute: {error}")
    if isinstance(error, BatchFailed):
        return InferenceError(grpc.StatusCode.INTERNAL, f"internal error: {error}")
    return InferenceError(grpc.StatusCode.UNAVAILABLE, str(error))  # BatcherClosed
