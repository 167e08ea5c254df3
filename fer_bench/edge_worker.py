"""An edge device for benchmarks: a separate process (so a CPU quota can hold it) driven over stdin/stdout.

Started as ``python -m fer_bench.edge_worker THREADS WEIGHTS RUNTIME``. Each stdin
line is a JSON command; each answer is one JSON line on stdout.

- ``{"op": "compute", "runs": N}``: median head / cloud / tail / whole milliseconds
  on this device, the stages measured in turn (round robin).
- ``{"op": "run", "target": "host:port", "strategies": [spec, ...], "rounds": N,
  "warmup": W, "adapt": A, "timeout_ms": T, "block": B}``: W untimed rounds of every
  strategy and A more of ``auto`` alone (its steady state at this link), then N rounds in which every strategy classifies
  the sample face B times in a row (the first untimed when B > 1), in a new random order each round, so that all
  strategies meet the same link at the same time, each in the CPU state it leaves itself; one record per timed
  classification, keyed by strategy name. A spec is ``{"name", "strategy", "encoding",
  "image_format", "image_size", "split_returns"}``.
- ``{"op": "round_trip", "target": "host:port", "calls": N}``: the least and the median
  milliseconds of N tiny calls (``ServerLive``, about 100 bytes), one after the other: what any
  call pays on this link from this device, whatever it carries (the least is the floor's round trip).
- ``{"op": "trace", ...same..., "seconds": S}``: the same round robin for S
  seconds (while the parent changes the link), each record with its time.
- ``{"op": "video", "target", "strategy": spec, "path": VIDEO, "in_flight": N,
  "skip": K, "timeout_ms": T, "detector": D}``: the whole edge pipeline (read, detect
  with ``fer-edge run --detector D``, default auto, track, classify with N frames in flight, smooth) over a video file; frames per second from the
  K-th record to the last, how the faces were answered, and each face's record
  (when it came out, its latency parts, who answered it, auto's choice and why).

Runners (and so auto's estimates) live as long as the worker, per target and spec.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import cv2

from edge_client.samples import sample_image
from edge_client.breaker import CircuitBreaker
from edge_client.daemon import run_source
from edge_client.faces import AUTO_DETECTOR, FaceDetector, make_detector
from edge_client.sources import open_source
from edge_client.runner import FaceResult, EdgeRunner
from edge_client.transport import CloudClient
from edge_client.wire_options import WireOptions
from shared_model.preprocessing import pixels_to_array, prepare_face
from shared_model.runtimes import load_backend

__all__ = ["EdgeWorker", "main"]


class EdgeWorker:
    def __init__(self, threads: int, weights: str | None = None, runtime: str = "onnx") -> None:
        self.runtime = runtime
        self.backend = load_backend(runtime, weights if runtime == "torch" else None, None, threads)
        self.fingerprint = self.backend.fingerprint
        image = cv2.imread(str(sample_image()))
        box = FaceDetector().detect(image)[0]
        self.crop = FaceDetector.crop(image, box)
        self.pixels = prepare_face(self.crop, self.backend.config.input_size)
        self._runners: dict[tuple[str, str], EdgeRunner] = {}

    def round_trip(self, command: dict) -> dict[str, float]:
        """Least and median milliseconds of a tiny call on this link (after three unrecorded ones)."""
        client = CloudClient(command["target"], self.fingerprint, timeout_s=command.get("timeout_ms", 10_000) / 1000)
        try:
            times = [client.round_trip() for _ in range(3 + command.get("calls", 20))][3:]
        finally:
            client.close()
        answered = [t * 1000 for t in times if t is not None]
        if not answered:
            return {"round_trip_ms": float("nan"), "round_trip_median_ms": float("nan")}
        return {"round_trip_ms": min(answered), "round_trip_median_ms": statistics.median(answered)}

    def compute(self, runs: int) -> dict[str, float]:
        """Median milliseconds per stage on this device, the stages taking turns."""
        x = pixels_to_array(self.pixels)
        z = self.backend.head(x)
        stages = {
            "head": lambda: self.backend.head(x),
            "cloud": lambda: self.backend.cloud(z),
            "tail": lambda: self.backend.tail(z),
            "whole": lambda: self.backend.tail(self.backend.cloud(self.backend.head(x))),
        }
        times: dict[str, list[float]] = {name: [] for name in stages}
        for index in range(runs + 3):
            for name, stage in stages.items():
                started = time.perf_counter()
                stage()
                if index >= 3:
                    times[name].append((time.perf_counter() - started) * 1000)
        return {f"{name}_ms": statistics.median(values) for name, values in times.items()}

    def _runner(self, target: str, spec: dict[str, Any], timeout_s: float, use_stream: bool = False) -> EdgeRunner:
        key = (target, json.dumps(spec, sort_keys=True), use_stream)
        if key not in self._runners:
            remote = spec["strategy"] != "edge"
            client = CloudClient(target, self.fingerprint, timeout_s=timeout_s) if remote else None
            breaker = CircuitBreaker(probe=(lambda: client.healthy(min(0.25, timeout_s)))) if client else None
            wire = WireOptions(
                spec.get("encoding", "uint8"), spec.get("image_format", "jpeg"), spec.get("image_size"), split_returns=spec.get("split_returns", "attention"),
            )
            self._runners[key] = EdgeRunner(self.backend, spec["strategy"], client, breaker, wire, timeout_s=timeout_s, use_stream=use_stream)
        return self._runners[key]

    def _round_robin(self, command: dict, rounds: int | None, seconds: float | None) -> dict[str, list[dict]]:
        timeout = command.get("timeout_ms", 10_000) / 1000
        specs = command["strategies"]
        runners = [(spec["name"], self._runner(command["target"], spec, timeout)) for spec in specs]
        for _ in range(command.get("warmup", 2)):
            for _, runner in runners:
                runner.classify(self.pixels, self.crop)
        for _ in range(command.get("adapt", 0)):  # auto alone: time to notice the link it is on now
            for _, runner in runners:
                if runner.strategy == "auto":
                    runner.classify(self.pixels, self.crop)
        for _, runner in runners:
            runner.wait_for_background(timeout)
        records: dict[str, list[dict]] = {name: [] for name, _ in runners}
        # A new random order every round (seeded: the same for every run), so that no strategy always
        # follows the same one. Each turn is a block of consecutive faces, the first untimed: what ran
        # just before changes what is left of a CPU quota's period and of a token bucket's burst, and a
        # device runs one strategy at a time, so each is timed in the state it leaves them itself.
        block = max(1, int(command.get("block", 1)))
        order = random.Random(command.get("seed", 0))
        started = time.perf_counter()
        turn = 0
        while (rounds is not None and turn < rounds) or (seconds is not None and time.perf_counter() - started < seconds):
            for name, runner in order.sample(runners, len(runners)):
                for face in range(block):
                    at = time.perf_counter() - started
                    result = runner.classify(self.pixels, self.crop)
                    if face > 0 or block == 1:
                        records[name].append({"t": round(at, 4), **_record(result)})
                if len(runners) > 1:
                    # A re-measurement auto left in flight ends within its own turn: another strategy's faces
                    # must not share the link or the CPU with it (a device runs one strategy at a time).
                    runner.wait_for_background(timeout)
            turn += 1
        return records

    def run(self, command: dict) -> dict[str, list[dict]]:
        return self._round_robin(command, command["rounds"], None)

    def trace(self, command: dict) -> dict[str, list[dict]]:
        return self._round_robin(command, None, command["seconds"])

    def video(self, command: dict) -> dict[str, Any]:
        """Frames per second of the whole pipeline over a video file, one strategy, N frames in flight."""
        # over the stream, as fer-edge run does for video
        runner = self._runner(command["target"], command["strategy"], command.get("timeout_ms", 10_000) / 1000, use_stream=True)
        source = open_source(command["path"])
        times: list[float] = []
        frames: set[int] = set()
        strategies: Counter[str] = Counter()
        fallbacks = 0
        face_records: list[dict[str, Any]] = []
        detector = make_detector(command.get("detector", AUTO_DETECTOR))
        for record in run_source(source, detector, runner, in_flight=command["in_flight"]):
            times.append(time.perf_counter())
            frames.add(record["frame"])
            if record.get("error") is None:
                face_records.append(_video_face(record, times[-1] - times[0]))
                strategies[record["strategy"]] += 1
                fallbacks += bool(record["fallback"])
        skip = min(command.get("skip", 10), max(len(times) - 2, 0))
        seconds = times[-1] - times[skip] if len(times) > skip + 1 else float("nan")
        return {
            "frames": len(frames), "records": len(times), "faces": sum(strategies.values()), "fallbacks": fallbacks,
            "strategies": dict(strategies), "seconds": seconds, "fps": (len(times) - 1 - skip) / seconds if seconds > 0 else float("nan"),
            "face_records": face_records,
        }

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()


def _video_face(record: dict[str, Any], t: float) -> dict[str, Any]:
    """One face of a video run as the benchmark keeps it: when it came out, its parts, who answered and why."""
    auto = record.get("auto") or {}
    return {
        "frame": record["frame"], "t": round(t, 4), **record["latency"], "strategy": record["strategy"],
        "fallback_reason": record["fallback_reason"], "auto_choice": auto.get("choice"), "auto_reason": auto.get("reason"),
    }


def _record(result: FaceResult) -> dict:
    auto = result.auto or {}
    return {
        **asdict(result.latency), "bytes_up": result.bytes_up, "bytes_down": result.bytes_down, "fallback": result.fallback,
        "fallback_reason": result.fallback_reason, "strategy": result.strategy, "auto_choice": auto.get("choice"), "auto_reason": auto.get("reason"),
        "auto_background": auto.get("background"), "auto_predicted_ms": auto.get("predicted_ms"),
    }


def main() -> int:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    weights = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
    runtime = sys.argv[3] if len(sys.argv) > 3 else "onnx"
    worker = EdgeWorker(threads, weights, runtime)
    print(json.dumps({"ready": True, "runtime": runtime, "threads": threads}), flush=True)
    operations = {"compute": lambda c: worker.compute(c.get("runs", 30)), "run": worker.run, "round_trip": worker.round_trip, "trace": worker.trace, "video": worker.video}
    try:
        for line in sys.stdin:
            command = json.loads(line)
            print(json.dumps(operations[command["op"]](command)), flush=True)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
