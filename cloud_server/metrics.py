"""Prometheus metrics of the cloud service, in a registry of its own per server."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Requests by model and status, queue/compute/total latency, batch sizes, expired and in-flight requests.

    Labels are model names and status codes only: nothing a client sends (tokens,
    ids) ever becomes a label.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fer_requests", "Inference requests by model and gRPC status", ["model", "status"], registry=self.registry)
        self.queue_seconds = Histogram("fer_queue_seconds", "Time waiting for a batch", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.compute_seconds = Histogram("fer_compute_seconds", "Forward pass time of the batch", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.request_seconds = Histogram("fer_request_seconds", "Total server time per request", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("fer_batch_size", "Items per executed batch", ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.expired = Counter("fer_expired_requests", "Requests whose deadline passed before they were answered (still queued: dropped before compute)", ["model"], registry=self.registry)
        self.in_flight = Gauge("fer_in_flight_requests", "Requests being served now", registry=self.registry)
        self._http = None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose /metrics over HTTP; returns the bound port (0 picks a free one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http = None
