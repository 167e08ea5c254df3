"""Measure: ONNX Runtime's worker threads spinning between runs, on and off, for the edge's three partitions. Not a test.

Each setting in a process of its own (two threads per session, as the laptop
profile): p50 of head + attention + tail back to back, then with 5 ms between
faces (a camera's pace) with the CPU time each face costs, gap included.

    .venv/bin/python -m fer_bench.measure.onnx_spinning --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["one", "main"]

ROOT = Path(__file__).resolve().parents[2]


def one(threads: int, spin: bool, faces: int) -> dict:
    import numpy as np

    from shared_model.runtimes import OnnxBackend

    backend = OnnxBackend(None, threads, spin=spin)
    size = backend.config.input_size
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)

    def face() -> float:
        started = time.perf_counter()
        backend.tail(backend.cloud(backend.head(x)))
        return time.perf_counter() - started

    for _ in range(20):
        face()
    back_to_back = statistics.median(face() for _ in range(faces))
    cpu, wall = time.process_time(), time.perf_counter()
    paced = []
    for _ in range(faces):
        paced.append(face())
        time.sleep(0.005)
    return {
        "spin": spin, "threads": threads, "back_to_back_p50_ms": round(back_to_back * 1e3, 2), "paced_p50_ms": round(statistics.median(paced) * 1e3, 2),
        "paced_cpu_ms_per_face": round((time.process_time() - cpu) / faces * 1e3, 2), "paced_wall_ms_per_face": round((time.perf_counter() - wall) / faces * 1e3, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="each setting this many times, alternating")
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.threads, args.one == "on", args.faces)))
        return 0
    for _ in range(args.rounds):
        for setting in ("on", "off"):
            done = subprocess.run([sys.executable, "-m", "fer_bench.measure.onnx_spinning", "--one", setting, "--threads", str(args.threads), "--faces", str(args.faces)], cwd=ROOT, capture_output=True, text=True, timeout=600)
            print(done.stdout.strip() or done.stderr[-2000:], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
