"""The gRPC servicer: thin, it maps protocol calls onto the engine and statuses onto errors."""

from __future__ import annotations

import logging
import threading
from typing import Iterator

import grpc

from shared_model.protocol import pb, pb_grpc

from .engine import InferenceEngine
from .inference import MODELS, InferenceError, model_metadata

log = logging.getLogger(__name__)
SERVER_NAME = "fer-cloud"
SERVER_VERSION = "0.1.0"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over an :class:`InferenceEngine`."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self._draining = threading.Event()

    def start_draining(self) -> None:
        """From now on: not ready, new inference calls UNAVAILABLE."""
        self._draining.set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.draining)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        known = request.name in MODELS and request.version in ("", self.engine.fingerprint)
        return pb.ModelReadyResponse(ready=known and not self.draining)

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["model_stream_infer"])

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        if request.name not in MODELS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}; this server serves {', '.join(MODELS)}")
        if request.version not in ("", self.engine.fingerprint):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name} version {request.version} is not served here (this server holds version {self.engine.fingerprint})")
        return model_metadata(request.name, self.engine.config, self.engine.fingerprint)

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        if self.draining:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, "server is draining; send requests to another replica")
        return self.engine.infer(request)

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        try:
            return self._infer(request)
        except InferenceError as error:
            context.abort(error.code, error.message)
        except Exception as error:  # a bug must not kill the server: report it, keep serving
            log.exception("inference failed")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext) -> Iterator[pb.ModelStreamInferResponse]:
        """Each request gets one response in order; errors travel in-stream (with the request id)."""
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request))
            except InferenceError as error:
                yield _stream_error(request, f"{error.code.name}: {error.message}")
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    return
            except Exception as error:
                log.exception("stream inference failed")
                yield _stream_error(request, f"INTERNAL: {type(error).__name__}: {error}")


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
    )
