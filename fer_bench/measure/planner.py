"""Measure: what auto's planner costs per face, on its own (no inference, no network). Not a test.

A planner fed simulated faces of a camera-class edge (the crop fastest, the edge and the
splits far behind), with the background re-measuring on, as on a device: after 200 faces to
settle, the median of ``--faces`` faces' choose, observe and the record's predictions.

    .venv/bin/python -m fer_bench.measure.planner --faces 5000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from edge_client.planner import AutoPlanner, Observation
from edge_client.strategies import CLOUD, EDGE, SPLIT, SPLIT_REST

__all__ = ["FACES", "main"]

FACES = {  # milliseconds and bytes of one face by each strategy
    EDGE: dict(head_ms=12.0, attention_ms=0.3, tail_ms=8.0, total_ms=21.0),
    CLOUD: dict(encode_ms=0.13, network_ms=1.0, server_ms=5.9, total_ms=7.2, bytes_up=1_800, bytes_down=168),
    SPLIT: dict(head_ms=2.0, encode_ms=0.1, network_ms=8.0, server_ms=0.5, tail_ms=8.0, total_ms=23.0, bytes_up=6_400, bytes_down=1_046),
    SPLIT_REST: dict(head_ms=2.0, encode_ms=0.1, network_ms=8.0, server_ms=4.0, total_ms=15.0, bytes_up=6_400, bytes_down=161),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=5000)
    args = parser.parse_args()
    planner = AutoPlanner()

    def face() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        decision = planner.choose(background_ready=True)
        t1 = time.perf_counter()
        planner.observe(Observation(decision.strategy, **FACES[decision.strategy]))
        t2 = time.perf_counter()
        decision.to_dict()
        return t1 - t0, t2 - t1, time.perf_counter() - t0

    for _ in range(200):
        face()
    samples = [face() for _ in range(args.faces)]
    report = {name: round(statistics.median(s[i] for s in samples) * 1e6, 1) for i, name in enumerate(("choose_us", "observe_us", "face_us"))}
    print(json.dumps({"faces": args.faces, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
