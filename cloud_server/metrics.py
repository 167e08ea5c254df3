"""Prometheus metrics of the cloud service, in a registry of its own per server."""

from __future__ import annotations

import bisect
import threading
from typing import Any, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily

__all__ = ["LATENCY_BUCKETS", "BATCH_BUCKETS", "LightHistogram", "ServerMetrics"]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class LightHistogram:
    """A Prometheus histogram labelled by model, cheap to observe on the request path.

    ``prometheus_client.Histogram`` costs several microseconds per observation
    (label lookup, a Python loop over the buckets, a lock per bucket update);
    this one costs a bisect and two additions under one lock, and is turned into
    the exposition format only when scraped.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(b) for b in buckets)
        self._series: dict[str, list[float]] = {}  # model -> per-bucket counts (the last: above every bound), then the sum
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, model: str, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(model)
            if series is None:
                series = self._series[model] = [0.0] * (len(self.bounds) + 2)
            series[index] += 1
            series[-1] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        with self._lock:
            snapshot = {model: list(series) for model, series in self._series.items()}
        for model, series in sorted(snapshot.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(str, self.bounds), "+Inf"), series[:-1]):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([model], buckets, series[-1])
        yield family


class ServerMetrics:
    """Requests by model and status, queue/compute/total latency, batch sizes, expired and in-flight requests.

    Labels are model names and status codes only: nothing a client sends (tokens,
    ids) ever becomes a label.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fer_requests", "Inference requests by model and gRPC status", ["model", "status"], registry=self.registry)
        self.queue_seconds = LightHistogram("fer_queue_seconds", "Time waiting for a batch", LATENCY_BUCKETS, self.registry)
        self.compute_seconds = LightHistogram("fer_compute_seconds", "Forward pass time of each batch", LATENCY_BUCKETS, self.registry)
        self.request_seconds = LightHistogram("fer_request_seconds", "Total server time per request", LATENCY_BUCKETS, self.registry)
        self.batch_size = LightHistogram("fer_batch_size", "Items per executed batch", BATCH_BUCKETS, self.registry)
        self.expired = Counter("fer_expired_requests", "Requests whose deadline passed before they were answered (still queued: dropped before compute)", ["model"], registry=self.registry)
        self.in_flight = Gauge("fer_in_flight_requests", "Requests being served now", registry=self.registry)
        self.in_flight_count = 0  # read when scraped: a plain counter costs the request path nothing
        self.in_flight.set_function(lambda: self.in_flight_count)
        self._http = None
        # Label lookups cost more than the update itself: the children are looked up once.
        self._requests: dict[tuple[str, str], Any] = {}

    def request_done(self, model: str, status: str, seconds: float | None = None) -> None:
        """One request answered: counted by model and status; ``seconds`` (its total time) goes to the latency histogram."""
        key = (model, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(model, status)
        counter.inc()
        if status == "DEADLINE_EXCEEDED":
            self.expired.labels(model).inc()
        if seconds is not None:
            self.request_seconds.observe(model, seconds)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose /metrics over HTTP; returns the bound port (0 picks a free one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http = None
