"""The gRPC servicer (grpc.aio): thin, it maps protocol calls onto the engine and statuses onto errors.

Every method is a coroutine on the server's one event loop, so an open stream
costs a coroutine, not a thread; every inference request takes the engine's
one path (:meth:`~cloud_server.engine.InferenceEngine.infer`).

``ModelInfer`` and ``ModelStreamInfer`` take and return serialized messages
(:func:`add_inference_service` registers them without protobuf (de)serializers), so
tensors are never copied through protobuf (:mod:`cloud_server.wire`); the other
methods use the generated message classes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import grpc
from google.protobuf import message_factory

from shared_model.protocol import SERVICE_NAME, pb, pb_grpc, stream_error_message

from . import wire
from .engine import InferenceEngine
from .inference import MAX_INPUTS, MODELS, InferenceError, echoed, model_metadata

__all__ = ["SERVER_NAME", "SERVER_VERSION", "STREAM_WINDOW", "RAW_METHODS", "InferenceServicer", "inference_method_handlers", "add_inference_service"]

log = logging.getLogger(__name__)
SERVER_NAME = "fer-cloud"
SERVER_VERSION = "0.1.0"
STREAM_WINDOW = 64  # requests of one stream in the server at once; more wait in the transport (flow control)
RAW_METHODS = ("ModelInfer", "ModelStreamInfer")  # served on serialized messages
MAX_DETAILS = 2000  # bytes of an error message (gRPC percent-encodes non-ASCII bytes, and its trailers hold ~8 KB); inference.echoed bounds what clients sent


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.perf_counter()`` value (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.perf_counter() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over an :class:`InferenceEngine`."""

    def __init__(self, engine: InferenceEngine, stream_window: int = STREAM_WINDOW) -> None:
        self.engine = engine
        self.stream_window = stream_window

    def start_draining(self) -> None:
        """From now on: not ready, new inference calls UNAVAILABLE."""
        self.engine.start_draining()

    @property
    def draining(self) -> bool:
        return self.engine.draining

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.draining)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        known = request.name in MODELS and request.version in ("", self.engine.fingerprint)
        return pb.ModelReadyResponse(ready=known and not self.draining)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["model_stream_infer"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        if request.name not in MODELS:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {echoed(request.name)}; this server serves {', '.join(MODELS)}")
        if request.version not in ("", self.engine.fingerprint):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name} version {echoed(request.version)} is not served here (this server holds version {self.engine.fingerprint})")
        return model_metadata(request.name, self.engine.config, self.engine.fingerprint)

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """A serialized ``ModelInferRequest`` in, a serialized ``ModelInferResponse`` out."""
        try:
            return await self.engine.infer(request, _deadline(context))
        except InferenceError as error:
            await context.abort(error.code, _bounded(error.message))
        except Exception as error:  # a bug must not kill the server: report it, keep serving
            log.exception("inference failed")
            await context.abort(grpc.StatusCode.INTERNAL, _bounded(f"internal error: {type(error).__name__}: {error}"))
        raise AssertionError("unreachable: abort raises")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Each request gets one response, in order; errors travel in-stream (with the request id).

        Serialized ``ModelInferRequest`` messages in, serialized ``ModelStreamInferResponse`` messages out.

        Up to ``stream_window`` requests of the stream are computed at once (so
        they can share batches); a draining server answers UNAVAILABLE and ends
        the stream.
        """
        replies: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()
        window = asyncio.Semaphore(self.stream_window)
        reader = asyncio.create_task(self._read_stream(request_iterator, replies, window, _deadline(context)))
        try:
            while (task := await replies.get()) is not None:
                reply, last = await task
                window.release()
                yield reply
                if last:
                    return
        finally:
            reader.cancel()
            while not replies.empty():
                if (task := replies.get_nowait()) is not None:
                    task.cancel()

    async def _read_stream(self, requests: AsyncIterator[bytes], replies: asyncio.Queue, window: asyncio.Semaphore, deadline: float | None) -> None:
        try:
            async for request in requests:
                await window.acquire()
                replies.put_nowait(asyncio.create_task(self._stream_reply(request, deadline)))
        finally:
            replies.put_nowait(None)

    async def _stream_reply(self, request: bytes, deadline: float | None) -> tuple[bytes, bool]:
        """The stream response for one request, and whether the stream should end after it."""
        try:
            return wire.stream_response_bytes(await self.engine.infer(request, deadline)), False
        except InferenceError as error:
            return _stream_error(request, stream_error_message(error.code.name, _bounded(error.message))), error.code == grpc.StatusCode.UNAVAILABLE
        except Exception as error:
            log.exception("stream inference failed")
            return _stream_error(request, stream_error_message(grpc.StatusCode.INTERNAL.name, _bounded(f"{type(error).__name__}: {error}"))), False


def _bounded(message: str) -> str:
    """An error message cut to :data:`MAX_DETAILS` bytes of UTF-8: a last guard for text no one bounded (an exception's)."""
    data = message.encode()
    return message if len(data) <= MAX_DETAILS else data[:MAX_DETAILS].decode(errors="ignore") + "..."


def _stream_error(request: bytes, message: str) -> bytes:
    """An in-stream error naming the request's id, and its model when served here (none when the request could not be read).

    An unknown model name is not echoed (the message shows it, shortened), so
    the answer to a request that fits the message limit fits it too.
    """
    try:
        parsed, _ = wire.split_infer_request(request, max_raws=MAX_INPUTS)
    except wire.MalformedMessage as error:
        parsed = error.request or pb.ModelInferRequest()
    model_name = parsed.model_name if parsed.model_name in MODELS else ""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=model_name, id=parsed.id),
    ).SerializeToString()


def inference_method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The handlers of ``inference.GRPCInferenceService``, as the generated code makes them, but
    with :data:`RAW_METHODS` taking and returning serialized messages."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        behaviour = getattr(servicer, method.name)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        if method.name in RAW_METHODS:
            handlers[method.name] = kind(behaviour)
        else:
            request_type = message_factory.GetMessageClass(method.input_type)
            response_type = message_factory.GetMessageClass(method.output_type)
            handlers[method.name] = kind(behaviour, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString)
    return handlers


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` on ``server`` (in place of the generated ``add_GRPCInferenceServiceServicer_to_server``)."""
    handlers = inference_method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
