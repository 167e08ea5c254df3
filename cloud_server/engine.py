"""The inference engine behind the gRPC service: model, batchers, limits, metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

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
    pb,
    set_parameters,
)

from .batching import BatcherClosed, DynamicBatcher, QueueFull
from .inference import (
    InferenceError,
    Limits,
    check_model,
    features_response,
    parse_features,
    parse_images,
    probabilities_response,
)
from .metrics import ServerMetrics


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 512


class InferenceEngine:
    """Runs ``fer_attention`` and ``fer_classifier`` requests; thread-safe."""

    def __init__(
        self,
        model: FERNet,
        device: torch.device | str = "cpu",
        batching: BatchingSettings | None = None,
        limits: Limits | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.fingerprint = model_fingerprint(model)
        self.limits = limits or Limits()
        self.metrics = metrics or ServerMetrics()
        batching = batching or BatchingSettings()
        delay = batching.max_queue_delay_ms / 1000
        self.batchers = {
            ATTENTION_MODEL: DynamicBatcher(self._attention, batching.max_batch_size, delay, batching.max_queue_size, "attention-batcher"),
            CLASSIFIER_MODEL: DynamicBatcher(self._classify, batching.max_batch_size, delay, batching.max_queue_size, "classifier-batcher"),
        }

    def _attention(self, x: Tensor) -> Tensor:
        return self.model.cloud(x.to(self.device)).float().cpu()

    def _classify(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.device)).softmax(dim=1).float().cpu()

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Validate, run (batched) and answer one request; raises :class:`InferenceError`."""
        started = time.perf_counter()
        model = request.model_name if request.model_name in self.batchers else "unknown"
        status = grpc.StatusCode.OK
        self.metrics.in_flight.inc()
        try:
            response = self._infer(request, model, started)
            return response
        except InferenceError as error:
            status = error.code
            raise
        except Exception:
            status = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(model, status.name).inc()
            if status == grpc.StatusCode.OK:
                self.metrics.request_seconds.labels(model).observe(time.perf_counter() - started)

    def _infer(self, request: pb.ModelInferRequest, model: str, started: float) -> pb.ModelInferResponse:
        check_model(request, self.fingerprint)
        if model == ATTENTION_MODEL:
            inputs, encoding = parse_features(request, self.config, self.limits)
        else:
            inputs = parse_images(request, self.config, self.limits)
        try:
            result = self.batchers[model].infer(inputs)
        except QueueFull as error:
            raise InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {error}; retry later") from None
        except BatcherClosed as error:
            raise InferenceError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        if model == ATTENTION_MODEL:
            response = features_response(request, result.output, encoding, self.fingerprint)
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
                "server_us": int((time.perf_counter() - started) * 1e6),
            },
        )
        return response

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
