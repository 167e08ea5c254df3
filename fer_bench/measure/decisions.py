"""Measure: a fingerprint of auto's decisions, to show that a change of the planner chose as before.

AutoPlanner in the simulated world of :mod:`fer_bench.planner_world` (random links and bursts,
the link changing every 100 faces, cloud outages, breaker trials, background calls, stalled
faces), 8 worlds of 500 faces from a fixed seed; prints how many decisions and the SHA-256 of each
one's strategy, reason, background target and predictions. Run it on two checkouts and compare:

    .venv/bin/python -m fer_bench.measure.decisions
    cd /old/checkout && /work/main/.venv/bin/python -m fer_bench.measure.decisions

(A checkout from before this tool moved here has it as ``tests/measure_decisions.py``.)
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

from edge_client.planner import AutoPlanner
from fer_bench.planner_world import ALL, World

__all__ = ["decisions_fingerprint", "main"]


def decisions_fingerprint(worlds: int = 8, faces: int = 500, seed: int = 7) -> tuple[int, str]:
    """How many decisions the default planner made in ``worlds`` random worlds, and their SHA-256."""
    digest, rng, count = hashlib.sha256(), random.Random(seed), 0
    for _ in range(worlds):
        world = World(bandwidth_bytes_per_ms=rng.choice([20.0, 200.0, 1000.0, 5000.0]), tail_ms=rng.choice([3.0, 15.0, 30.0]), burst_bytes=rng.choice([0, 3000]))
        planner = AutoPlanner(ALL)
        planner.observe_rtt(world.rtt_ms / 1000)
        for face in range(faces):
            if face % 100 == 50:
                world = replace(world, bandwidth_bytes_per_ms=rng.choice([10.0, 200.0, 2000.0]), cloud_up=rng.random() > 0.2)
            decision = planner.choose(cloud_on_trial=rng.random() < 0.02, background_ready=rng.random() > 0.3)
            observation = world.observe(decision.strategy)
            if rng.random() < 0.1 and observation.total_ms:  # a stalled face
                observation = replace(observation, total_ms=observation.total_ms * 2)
            planner.observe(observation)
            if decision.background:
                planner.observe(replace(world.observe(decision.background), background=True))
            digest.update(repr((decision.strategy, decision.reason, decision.background, sorted(decision.predicted_ms.items()))).encode())
            count += 1
    return count, digest.hexdigest()


def main() -> int:
    """Print the decision count and fingerprint."""
    print(*decisions_fingerprint())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
