"""The auto planner's decisions against a simulated edge and link whose costs the test sets.

The simulated world gives each strategy's measurements from known stage times,
RTT and bandwidth; the planner must find the strategy the world makes fastest,
follow the world when it changes, and keep its exploration within its bound.
(Real links and real CPU limits: tests/test_auto_system.py and fer-bench network.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge_client.auto import CALIBRATING, EDGE, EXPLORING, SPLIT, SPLIT_REST, CLOUD, AutoPlanner, Observation

BYTES = {SPLIT: (6_420, 960), SPLIT_REST: (6_420, 170), CLOUD: (1_600, 170)}


@dataclass(frozen=True)
class World:
    head_ms: float = 10.0
    attention_ms: float = 1.0
    tail_ms: float = 15.0
    encode_ms: float = 0.2
    rtt_ms: float = 2.0
    bandwidth_bytes_per_ms: float = 200.0  # 200 KB/s
    server_ms: float = 3.0
    cloud_up: bool = True

    def cost_ms(self, strategy: str) -> float:
        """The true latency of one face: what the planner should minimise."""
        if strategy == EDGE:
            return self.head_ms + self.attention_ms + self.tail_ms
        up, down = BYTES[strategy]
        wire = self.rtt_ms + (up + down) / self.bandwidth_bytes_per_ms + self.server_ms
        local = {CLOUD: 0.0, SPLIT: self.head_ms + self.tail_ms, SPLIT_REST: self.head_ms}[strategy]
        return local + self.encode_ms + wire

    def observe(self, strategy: str) -> Observation:
        if strategy == EDGE:
            return Observation(EDGE, head_ms=self.head_ms, attention_ms=self.attention_ms, tail_ms=self.tail_ms, total_ms=self.cost_ms(EDGE))
        head = None if strategy == CLOUD else self.head_ms
        if not self.cloud_up:
            return Observation(strategy, head_ms=head or self.head_ms, attention_ms=self.attention_ms, tail_ms=self.tail_ms, encode_ms=self.encode_ms, failed=True)
        up, down = BYTES[strategy]
        return Observation(
            strategy, head_ms=head, tail_ms=self.tail_ms if strategy == SPLIT else None, encode_ms=self.encode_ms,
            network_ms=self.rtt_ms + (up + down) / self.bandwidth_bytes_per_ms, server_ms=self.server_ms, bytes_up=up, bytes_down=down,
            total_ms=self.cost_ms(strategy),
        )

    def best(self, candidates) -> str:
        return min(candidates, key=self.cost_ms)


def _run(planner: AutoPlanner, world: World, faces: int) -> list[tuple[str, str]]:
    planner.observe_rtt(world.rtt_ms / 1000)
    choices = []
    for _ in range(faces):
        decision = planner.choose()
        planner.observe(world.observe(decision.strategy))
        choices.append((decision.strategy, decision.reason))
    return choices


ALL = (EDGE, CLOUD, SPLIT, SPLIT_REST)


def test_each_candidate_is_measured_once_before_predictions_are_trusted() -> None:
    choices = _run(AutoPlanner(ALL), World(), 4)
    assert sorted(s for s, _ in choices) == sorted(ALL)
    assert {r for _, r in choices} == {CALIBRATING}


def test_slow_link_keeps_the_edge_and_a_fast_one_offloads() -> None:
    slow = World(bandwidth_bytes_per_ms=50.0)  # 50 KB/s: every remote strategy costs > 35 ms
    assert slow.best(ALL) == EDGE
    choices = _run(AutoPlanner(ALL, explore_every=20), slow, 100)
    settled = [s for s, r in choices[4:] if r != EXPLORING]
    assert settled and all(s == EDGE for s in settled)

    fast_edge_slow_cpu = World(head_ms=40, tail_ms=60, bandwidth_bytes_per_ms=5_000.0)
    assert fast_edge_slow_cpu.best(ALL) == CLOUD
    choices = _run(AutoPlanner(ALL, explore_every=20), fast_edge_slow_cpu, 100)
    assert all(s == CLOUD for s, r in choices[4:] if r != EXPLORING)


def test_exploration_stays_within_its_bound() -> None:
    planner = AutoPlanner(ALL, explore_every=20)
    choices = _run(planner, World(bandwidth_bytes_per_ms=50.0), 404)
    explorations = sum(r == EXPLORING for _, r in choices)
    assert 0 < explorations <= 400 // 20


def test_a_better_link_is_noticed_by_exploring() -> None:
    planner = AutoPlanner((EDGE, SPLIT_REST), explore_every=10)
    slow, fast = World(bandwidth_bytes_per_ms=50.0), World(bandwidth_bytes_per_ms=2_000.0, head_ms=8, tail_ms=25)
    assert slow.best((EDGE, SPLIT_REST)) == EDGE and fast.best((EDGE, SPLIT_REST)) == SPLIT_REST
    _run(planner, slow, 40)
    assert planner.current == EDGE
    after = _run(planner, fast, 25)
    first_fast = next(i for i, (s, r) in enumerate(after) if s == SPLIT_REST and r != EXPLORING)
    assert first_fast <= 12  # within one exploration period (10) and a face or two


def test_a_worse_link_is_left_within_a_few_faces() -> None:
    planner = AutoPlanner((EDGE, SPLIT_REST), explore_every=50)
    fast, slow = World(bandwidth_bytes_per_ms=2_000.0, tail_ms=25), World(bandwidth_bytes_per_ms=50.0, tail_ms=25)
    _run(planner, fast, 20)
    assert planner.current == SPLIT_REST
    after = _run(planner, slow, 10)
    assert after.index((EDGE, "fastest")) <= 3


def test_a_dead_cloud_is_abandoned_at_once_and_resumed_when_it_returns() -> None:
    planner = AutoPlanner((EDGE, SPLIT_REST), deadline_s=1.0, explore_every=10)
    fast = World(bandwidth_bytes_per_ms=2_000.0, tail_ms=25)
    _run(planner, fast, 20)
    assert planner.current == SPLIT_REST
    down = _run(planner, replace(fast, cloud_up=False), 30)
    first_failure = next(i for i, (s, _) in enumerate(down) if s == SPLIT_REST)
    assert down[first_failure + 1] == (EDGE, "fastest")  # one failure moves the next face to the edge
    assert sum(s == SPLIT_REST for s, _ in down) <= 1 + 30 // 10  # then only explorations try the cloud
    back = _run(planner, fast, 15)
    assert back[-1] == (SPLIT_REST, "fastest")


def test_nearly_equal_strategies_do_not_flap() -> None:
    world = World(head_ms=10, attention_ms=1, tail_ms=15, bandwidth_bytes_per_ms=400.0, server_ms=3.0, rtt_ms=2.0)
    # split-rest: 10 + 0.2 + 2 + 6590/400 + 3 = 31.7 ms; edge: 26 ms ... make them within 2 %
    world = replace(world, tail_ms=world.cost_ms(SPLIT_REST) - 11.3)
    assert abs(world.cost_ms(EDGE) - world.cost_ms(SPLIT_REST)) / world.cost_ms(EDGE) < 0.02
    planner = AutoPlanner((EDGE, SPLIT_REST), explore_every=1000)
    choices = [s for s, _ in _run(planner, world, 200)][2:]
    switches = sum(a != b for a, b in zip(choices, choices[1:]))
    assert switches <= 1


def test_removed_and_private_candidates_are_never_chosen() -> None:
    planner = AutoPlanner((EDGE, SPLIT, SPLIT_REST))
    planner.remove(SPLIT)
    choices = _run(planner, World(bandwidth_bytes_per_ms=5_000.0), 60)
    assert {s for s, _ in choices} <= {EDGE, SPLIT_REST}
    assert AutoPlanner((SPLIT_REST,)).candidates == [EDGE, SPLIT_REST]  # the edge can always answer


def test_a_cloud_back_on_trial_is_tried_at_once() -> None:
    planner = AutoPlanner((EDGE, CLOUD, SPLIT_REST), deadline_s=1.0, explore_every=50)
    fast = World(bandwidth_bytes_per_ms=2_000.0, tail_ms=25)
    _run(planner, fast, 10)
    _run(planner, replace(fast, cloud_up=False), 5)
    assert planner.current == EDGE
    decision = planner.choose(cloud_on_trial=True)  # the breaker's probe found the cloud healthy
    assert decision.strategy in (CLOUD, SPLIT_REST) and decision.reason == EXPLORING
    planner.observe(fast.observe(decision.strategy))
    assert planner.choose().strategy == fast.best((EDGE, CLOUD, SPLIT_REST))


def _skewed_world(strategy: str, face: int) -> Observation:
    """Edge: 5, 5, 10 ms again and again (median 5, mean 6.7: a CPU quota's slow faces); cloud: a steady 6.4 ms."""
    if strategy == EDGE:
        tail = 8.0 if face % 3 == 2 else 3.0
        return Observation(EDGE, head_ms=1.0, attention_ms=1.0, tail_ms=tail, total_ms=2.0 + tail)
    return Observation(CLOUD, encode_ms=0.5, network_ms=3.0, server_ms=2.9, bytes_up=1_600, bytes_down=170, total_ms=6.4)


def _edge_share_in_skewed_world(objective: str) -> float:
    planner = AutoPlanner((EDGE, CLOUD), explore_every=20, objective=objective)
    planner.observe_rtt(0.002)
    chosen = []
    for face in range(300):
        decision = planner.choose()
        planner.observe(_skewed_world(decision.strategy, face))
        chosen.append(decision.strategy)
    return chosen[100:].count(EDGE) / 200


def test_the_median_objective_prefers_the_lower_typical_latency_among_close_strategies() -> None:
    """Edge's typical face (5 ms) beats the cloud's 6.4; its mean (6.7) does not: the objectives disagree."""
    by_median, by_mean = _edge_share_in_skewed_world("median"), _edge_share_in_skewed_world("mean")
    assert by_mean <= 0.15, by_mean  # the mean objective runs edge only to explore it
    assert by_median >= 0.4 and by_median >= 3 * by_mean, (by_median, by_mean)


def test_an_unknown_objective_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="objective"):
        AutoPlanner(ALL, objective="p99")


def test_strategies_far_behind_are_re_measured_rarely_and_cheaply() -> None:
    """A camera-class edge whose cloud wins by far: exploring the far-behind strategies costs under 3 %
    of the best's latency (2.4 %; re-measuring each every 60 faces as before cost 10.4 %), and each is
    still re-measured."""
    world = World(head_ms=5.4, attention_ms=0.14, tail_ms=5.9, rtt_ms=2.0, bandwidth_bytes_per_ms=500.0, server_ms=1.0)
    best = world.best(ALL)
    assert best == CLOUD and all(world.cost_ms(s) > 1.5 * world.cost_ms(CLOUD) for s in ALL if s != CLOUD)
    planner = AutoPlanner(ALL, explore_every=20)
    choices = _run(planner, world, 100 + 1600)[100:]
    extra = sum(world.cost_ms(s) for s, _ in choices) / (len(choices) * world.cost_ms(best)) - 1
    assert extra < 0.03, extra
    explored = {s for s, reason in choices if reason == EXPLORING}
    assert explored == set(ALL) - {CLOUD}  # none is forgotten


def test_a_link_that_collapses_sends_the_next_faces_to_the_edge_not_through_the_other_remote_strategies() -> None:
    """Cloud wins on a fast link; the link drops 1000x. The cloud's own slow face shows the change, and it
    holds for every strategy that crosses the link: the others' network times measured before it are stale.
    Before, auto tried split-rest and split (each ~1.3 s here) on their fast-link times before the edge."""
    fast = World(head_ms=40, tail_ms=60, bandwidth_bytes_per_ms=5_000.0)
    slow = replace(fast, bandwidth_bytes_per_ms=5.0)  # 5 KB/s
    assert fast.best(ALL) == CLOUD and slow.best(ALL) == EDGE
    planner = AutoPlanner(ALL, explore_every=20)
    _run(planner, fast, 30)
    assert planner.current == CLOUD
    after = [s for s, _ in _run(planner, slow, 10)]
    first_edge = after.index(EDGE)
    assert set(after[:first_edge]) <= {CLOUD} and first_edge <= 2, after
    assert after[first_edge:] == [EDGE] * (10 - first_edge), after


def _first_remote_then_settled(link_change: float) -> list[str]:
    """Cloud wins on a fast link, the edge on a collapsed one; the link comes back. The settled choices
    from the first remote face on the recovered link."""
    fast = World(head_ms=40, tail_ms=60, bandwidth_bytes_per_ms=5_000.0)
    slow = replace(fast, bandwidth_bytes_per_ms=5.0)
    planner = AutoPlanner(ALL, explore_every=20, link_change=link_change)
    _run(planner, fast, 30)
    _run(planner, slow, 20)  # the cloud's own slow faces stay recent (within 3 exploration periods)
    assert planner.current == EDGE
    back = _run(planner, fast, 60)
    first_remote = next(i for i, (s, _) in enumerate(back) if s != EDGE)
    return [s for s, reason in back[first_remote + 1:] if reason != EXPLORING]


def test_a_link_that_comes_back_is_believed_for_every_strategy_from_the_first_call_that_shows_it() -> None:
    """Whichever strategy's exploration shows the recovered link, the next faces go to the best (cloud), not to
    the explored one while the cloud is predicted from what it measured on the collapsed link."""
    settled = _first_remote_then_settled(link_change=2.0)
    assert settled[:5] == [CLOUD] * 5, settled
    own_only = _first_remote_then_settled(link_change=float("inf"))  # each strategy learns from its own calls only
    assert own_only[:5] != [CLOUD] * 5, own_only  # the world does make the difference


def _run_with_background(planner: AutoPlanner, world: World, faces: int) -> list[tuple[str, str, str | None]]:
    """As _run, for a caller that measures in the background: a background call completes before the next face."""
    planner.observe_rtt(world.rtt_ms / 1000)
    choices = []
    for _ in range(faces):
        decision = planner.choose(background_ready=True)
        planner.observe(world.observe(decision.strategy))
        if decision.background is not None:
            measured = world.observe(decision.background)
            planner.observe(replace(measured, head_ms=None, tail_ms=None, total_ms=None, background=True))  # only what the call cost
        choices.append((decision.strategy, decision.reason, decision.background))
    return choices


def test_with_the_edge_chosen_far_remote_strategies_are_re_measured_behind_local_answers() -> None:
    """On a collapsed link every remote strategy is far behind the edge: none gets a face of its own (each
    such exploration cost a face ~1.3 s here), yet each is re-measured every few faces, so the link's
    return moves the next faces to the cloud within a few faces, not an exploration period."""
    fast = World(head_ms=40, tail_ms=60, bandwidth_bytes_per_ms=5_000.0)
    slow = replace(fast, bandwidth_bytes_per_ms=5.0)
    planner = AutoPlanner(ALL, explore_every=20)
    _run_with_background(planner, fast, 30)
    _run_with_background(planner, slow, 10)
    assert planner.current == EDGE
    on_slow = _run_with_background(planner, slow, 60)
    assert [s for s, _, _ in on_slow] == [EDGE] * 60, on_slow
    behind = [b for _, _, b in on_slow if b is not None]
    # split's work apart from the link (head, tail, server: 103 ms) is above the edge's 101: no link makes it win
    assert set(behind) == {CLOUD, SPLIT_REST} and len(behind) >= 60 // 10 - 1, on_slow
    back = _run_with_background(planner, fast, 20)
    assert [s for s, _, _ in back].index(CLOUD) <= 20 // 2 + 1, back
    assert [s for s, _, _ in back[-10:]] == [CLOUD] * 10, back
    # A caller that cannot measure in the background gets the foreground explorations as before.
    foreground = AutoPlanner(ALL, explore_every=20)
    _run(foreground, fast, 30)
    assert all(foreground.choose().background is None for _ in range(5))
    assert any(reason == EXPLORING and s != EDGE for s, reason in _run(foreground, slow, 100))

