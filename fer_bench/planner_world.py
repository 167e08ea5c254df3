"""A simulated edge and link for auto's planner, whose costs the caller sets.

:class:`World` gives each strategy's measurements from known stage times, round
trip, bandwidth, server time and a shaper's burst; :meth:`World.best` is the
strategy the planner should find. The planner's tests and the decision
fingerprint (:mod:`fer_bench.measure.decisions`) run the planner in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from edge_client.planner import Observation
from edge_client.strategies import CLOUD, EDGE, SPLIT, SPLIT_REST

__all__ = ["PAYLOAD_BYTES", "ALL", "World"]

PAYLOAD_BYTES = {SPLIT: (6_420, 960), SPLIT_REST: (6_420, 170), CLOUD: (1_600, 170)}  # each remote strategy's (up, down)
ALL = (EDGE, CLOUD, SPLIT, SPLIT_REST)


@dataclass(frozen=True)
class World:
    """An edge and its link: each stage's milliseconds, the round trip, the bandwidth, the server's time."""

    head_ms: float = 10.0
    attention_ms: float = 1.0
    tail_ms: float = 15.0
    encode_ms: float = 0.2
    rtt_ms: float = 2.0
    bandwidth_bytes_per_ms: float = 200.0  # 200 KB/s
    server_ms: float = 3.0
    cloud_up: bool = True
    burst_bytes: int = 0  # a shaper's token bucket: a call of at most this many bytes passes at line rate

    def network_ms(self, strategy: str) -> float:
        """Milliseconds on the link for one call of remote ``strategy``."""
        up, down = PAYLOAD_BYTES[strategy]
        return self.rtt_ms + max(0, up + down - self.burst_bytes) / self.bandwidth_bytes_per_ms

    def cost_ms(self, strategy: str) -> float:
        """The true latency of one face: what the planner should minimise."""
        if strategy == EDGE:
            return self.head_ms + self.attention_ms + self.tail_ms
        wire = self.network_ms(strategy) + self.server_ms
        local = {CLOUD: 0.0, SPLIT: self.head_ms + self.tail_ms, SPLIT_REST: self.head_ms}[strategy]
        return local + self.encode_ms + wire

    def observe(self, strategy: str) -> Observation:
        """What one face by ``strategy`` costs, as the runner would tell the planner."""
        if strategy == EDGE:
            return Observation(EDGE, head_ms=self.head_ms, attention_ms=self.attention_ms, tail_ms=self.tail_ms, total_ms=self.cost_ms(EDGE))
        head = None if strategy == CLOUD else self.head_ms
        if not self.cloud_up:
            return Observation(strategy, head_ms=head or self.head_ms, attention_ms=self.attention_ms, tail_ms=self.tail_ms, encode_ms=self.encode_ms, failed=True)
        up, down = PAYLOAD_BYTES[strategy]
        return Observation(
            strategy, head_ms=head, tail_ms=self.tail_ms if strategy == SPLIT else None, encode_ms=self.encode_ms,
            network_ms=self.network_ms(strategy), server_ms=self.server_ms, bytes_up=up, bytes_down=down,
            total_ms=self.cost_ms(strategy),
        )

    def best(self, candidates: Iterable[str]) -> str:
        """The strategy of ``candidates`` with the lowest true latency."""
        return min(candidates, key=self.cost_ms)
