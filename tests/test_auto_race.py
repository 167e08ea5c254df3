"""auto's races over a real gRPC server: two strategies at once, the first answer kept, exactly one result per face.

The planner is pinned to a race (a subclass that always decides it), so the
runner's racing is what is under test; what the planner learns from both
strategies is recorded by the real planner.
"""

from __future__ import annotations

import threading
import time

from faults import SLOW, Fault, FaultyServer

from edge_client.auto import EDGE, EXPLORING, SPLIT_REST, AutoPlanner, Decision, Observation
from edge_client.runner import EdgeRunner
from edge_client.transport import CloudClient
from shared_model.checkpoint import model_fingerprint

SERVER_DELAY_S = 1.0


class PinnedRace(AutoPlanner):
    """Always races ``strategy`` against ``rival``; records every observation it learns from."""

    def __init__(self, strategy: str, rival: str) -> None:
        super().__init__((EDGE, strategy, rival))
        self.pinned = (strategy, rival)
        self.observed: list[Observation] = []
        self._seen = threading.Lock()

    def choose(self, cloud_on_trial: bool = False) -> Decision:
        return Decision(self.pinned[0], EXPLORING, {}, race_with=self.pinned[1])

    def observe(self, obs: Observation) -> None:
        with self._seen:
            self.observed.append(obs)
        super().observe(obs)


def test_a_race_answers_with_the_first_strategy_and_learns_from_both(trained_model, sample_face) -> None:
    """A server that answers after 1 s against the local path: every face answered by the edge long before,
    the remote answer (within its 5 s deadline) still measured."""
    server = FaultyServer(trained_model, Fault(SLOW, delay_s=SERVER_DELAY_S))
    planner = PinnedRace(SPLIT_REST, EDGE)
    client = CloudClient(server.address, model_fingerprint(trained_model), timeout_s=5.0)
    runner = EdgeRunner(trained_model, "auto", client, timeout_s=5.0, planner=planner)
    try:
        results = [runner.classify(sample_face) for _ in range(3)]
    finally:
        runner.close()  # waits for the slower strategy of every race
        server.stop()
    assert len(results) == 3
    for result in results:
        assert result.strategy == EDGE and not result.fallback
        assert result.auto["race_with"] == EDGE and result.auto["won"] == EDGE
        assert result.latency.total < SERVER_DELAY_S * 1000 * 0.8, result.latency  # did not wait for the server
    remote = [o for o in planner.observed if o.strategy == SPLIT_REST]
    assert len(remote) == 3 and all(not o.failed and o.total_ms >= SERVER_DELAY_S * 1000 for o in remote)
    assert sum(o.strategy == EDGE for o in planner.observed) == 3


def test_a_race_won_by_the_cloud_returns_its_answer(trained_model, sample_face) -> None:
    """A healthy server and the cloud strategy against the edge: one result per face, from whichever came first,
    consistent with what each strategy answers alone."""
    server = FaultyServer(trained_model)
    planner = PinnedRace("cloud", EDGE)
    client = CloudClient(server.address, model_fingerprint(trained_model), timeout_s=5.0)
    runner = EdgeRunner(trained_model, "auto", client, timeout_s=5.0, planner=planner)
    alone = EdgeRunner(trained_model, "edge")
    try:
        started = time.perf_counter()
        results = [runner.classify(sample_face) for _ in range(6)]
        elapsed = time.perf_counter() - started
    finally:
        runner.close()
        server.stop()
    assert len(results) == 6 and elapsed < 60
    assert all(r.auto["won"] in ("cloud", EDGE) and r.strategy == r.auto["won"] and not r.fallback for r in results)
    assert {r.label for r in results} == {alone.classify(sample_face).label}
    assert sorted(o.strategy for o in planner.observed) == ["cloud"] * 6 + [EDGE] * 6
