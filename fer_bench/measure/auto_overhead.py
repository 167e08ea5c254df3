"""Measure: does auto's own work slow the faces it answers locally? Not a test.

One process, the laptop's ONNX Runtime edge, a fer-cloud on loopback: an ``auto``
runner and a fixed ``edge`` runner classify the sample face in turns, in a random
order each round, so both meet the same CPU. Prints the p50 of the fixed edge
and of the faces auto chose to answer with ``edge`` (its own work included).

    .venv/bin/python -m fer_bench.measure.auto_overhead --rounds 300
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import cv2

from edge_client.breaker import CircuitBreaker
from edge_client.faces import FaceDetector
from edge_client.runner import EdgeRunner
from edge_client.samples import sample_image
from edge_client.transport import CloudClient
from fer_bench.loopback import start_server
from shared_model.checkpoint import load_model
from shared_model.preprocessing import prepare_face
from shared_model.runtimes import load_backend

__all__ = ["main"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="the edge's ONNX Runtime threads")
    args = parser.parse_args()
    model, _ = load_model()
    server = start_server(model)
    backend = load_backend("onnx", None, None, args.threads)
    image = cv2.imread(str(sample_image()))
    crop = FaceDetector.crop(image, FaceDetector().detect(image)[0])
    pixels = prepare_face(crop, backend.config.input_size)
    client = CloudClient(f"127.0.0.1:{server.port}", backend.fingerprint, timeout_s=2.0)
    auto = EdgeRunner(backend, "auto", client, CircuitBreaker(probe=lambda: client.healthy(0.25)), timeout_s=2.0)
    edge = EdgeRunner(backend, "edge")
    runners = [("auto", auto), ("edge", edge)]
    times: dict[str, list[float]] = {"auto": [], "edge": []}
    try:
        for _ in range(30):  # warm-up, untimed
            for _, runner in runners:
                runner.classify(pixels, crop)
        order = random.Random(0)
        for _ in range(args.rounds):
            for name, runner in order.sample(runners, 2):
                started = time.perf_counter()
                result = runner.classify(pixels, crop)
                elapsed = (time.perf_counter() - started) * 1000
                if name == "edge" or (result.strategy == "edge" and result.auto and result.auto["choice"] == "edge"):
                    times[name].append(elapsed)
    finally:
        auto.close()
        server.stop_now()
    print(json.dumps({
        "fixed_edge_p50_ms": round(statistics.median(times["edge"]), 2), "auto_edge_p50_ms": round(statistics.median(times["auto"]), 2),
        "auto_edge_faces": len(times["auto"]), "fixed_edge_faces": len(times["edge"]), "rounds": args.rounds,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
