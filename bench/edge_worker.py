"""An edge device for benchmarks: a separate process (so a CPU quota can hold it) driven over stdin/stdout.

Each stdin line is a JSON command; each answer is one JSON line on stdout.

- ``{"op": "compute", "runs": N}``: median head / cloud / tail / whole milliseconds on this device.
- ``{"op": "run", "target": "host:port", "strategy": ..., "encoding": ..., "image_format": ...,
  "requests": N, "timeout_ms": T, "warmup": W}``: N classifications of the sample face, one record each.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import cv2
import torch

from bench.model import measure_latencies
from edge_client.backends import TorchBackend
from edge_client.breaker import CircuitBreaker
from edge_client.cli import sample_image
from edge_client.faces import FaceDetector
from edge_client.runner import EdgeRunner
from edge_client.transport import CloudClient
from shared_model.checkpoint import load_model
from shared_model.preprocessing import prepare_face


class EdgeWorker:
    def __init__(self, threads: int, weights: str | None = None) -> None:
        torch.set_num_threads(threads)
        self.model, _ = load_model(weights)
        self.backend = TorchBackend(self.model)
        self.fingerprint = self.backend.fingerprint
        image = cv2.imread(str(sample_image()))
        box = FaceDetector().detect(image)[0]
        self.pixels = prepare_face(FaceDetector.crop(image, box), self.model.config.input_size)

    def compute(self, runs: int) -> dict[str, float]:
        """Median milliseconds per stage on this device (the model table's measurement)."""
        latencies = measure_latencies([self.model], self.model.config.input_size, runs, warmup=3)[0]
        return {f"{stage}_ms": value for stage, value in latencies.items()}

    def run(self, command: dict) -> list[dict]:
        timeout = command.get("timeout_ms", 10_000) / 1000
        client = CloudClient(command["target"], self.fingerprint, timeout_s=timeout) if command["strategy"] != "edge" else None
        breaker = CircuitBreaker(failure_threshold=10**9)  # measure every request, never skip the cloud
        runner = EdgeRunner(
            self.backend, command["strategy"], client, breaker,
            encoding=command.get("encoding", "uint8"), image_format=command.get("image_format", "jpeg"), timeout_s=timeout,
        )
        try:
            for _ in range(command.get("warmup", 2)):
                runner.classify(self.pixels)
            return [_record(runner.classify(self.pixels)) for _ in range(command["requests"])]
        finally:
            if client:
                client.close()


def _record(result) -> dict:
    return {**asdict(result.latency), "bytes_up": result.bytes_up, "bytes_down": result.bytes_down, "fallback": result.fallback, "fallback_reason": result.fallback_reason, "strategy": result.strategy}


def main() -> int:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    worker = EdgeWorker(threads, sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None)
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "compute":
            answer = worker.compute(command.get("runs", 30))
        else:
            answer = worker.run(command)
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
