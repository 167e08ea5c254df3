"""``auto``: the fastest strategy for the next face, predicted from what this edge measured itself.

The rule, per face::

    predict(s) = compute(s) + server(s) + network(s) + overhead(s)     # for every candidate s
    best       = argmin predict; among those within TIE of it, argmin of their recent faces' median
    choose best, unless the current choice is within HYSTERESIS of it  (no flapping)
    every explore_every faces at most, run the most overdue other candidate instead (exploring):
        due every period within FAR x the best, every period x ratio**3 beyond (16 periods at most)
    while the edge answers, re-measure far remote strategies beside its answers, not on faces of their own

``compute``: EWMAs of the edge's stages; ``server``: the recent median of each model's server time;
``network``: the strategy's own recent network time, else the link model's RTT + bytes x cost per
byte, times the model's error on that strategy's own calls. A network time far from its prediction
marks a change of the link for every remote strategy; a failed call charges every remote strategy
the deadline until one succeeds. The estimates are in :mod:`edge_client.estimates`.

Thread-safe: one planner may serve a runner used from several threads.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from .estimates import Ewma, LinkEstimate, RecentMedian, link_changed
from .strategies import CALIBRATING, CLOUD, CONCRETE_STRATEGIES, EDGE, EXPLORING, FASTEST, ONLY, REMOTE_STRATEGIES, SPLIT, SPLIT_REST

__all__ = ["PRIOR_BYTES", "FAR", "MAX_EXPLORATION_STRETCH", "TIE", "HYSTERESIS", "Decision", "Observation", "AutoPlanner"]

# Bytes on the wire before anything is measured (gRPC/HTTP2 framing included), for an 8x28x28 split.
PRIOR_BYTES = {
    CLOUD: (2_000, 170),
    SPLIT: (6_420, 960),
    SPLIT_REST: (6_420, 170),
}
EXPLORE_EVERY = 20  # faces between explorations, at most
TIE = 0.15  # strategies predicted within this fraction of the best are compared by their recent faces
HYSTERESIS = 0.05  # a challenger must beat the current choice by this fraction to take over
ALPHA = 0.3  # weight of a new sample in the per-face EWMAs
LINK_ALPHA = 0.5  # ... in the link's cost per byte
# A strategy predicted more than FAR times the best's latency is re-measured less often (see
# AutoPlanner._exploration_interval), at most MAX_EXPLORATION_STRETCH exploration periods apart.
FAR = 1.5
MAX_EXPLORATION_STRETCH = 16.0
# Bounds of the link model's correction for one strategy: a ratio beyond them is a stall or a model
# with nearly nothing to go on, not the model's error for that strategy's messages.
MIN_LINK_BIAS, MAX_LINK_BIAS = 0.2, 20.0
RECENT_FACES = 9  # whole-face latencies kept per strategy for its median
MIN_RECENT = 3  # fewer recent faces than this: no median, the prediction stands
EDGE_STAGES = ("head", "attention", "tail")
LOCAL_STAGES = {CLOUD: ("encode_image",), SPLIT: ("head", "encode_features", "tail"), SPLIT_REST: ("head", "encode_features")}


@dataclass
class Decision:
    """What auto chose for one face, why, and what it predicted for every candidate (ms).

    ``background``: a remote strategy to re-measure on this face off its path (the
    face is answered by ``strategy``, the edge; see :meth:`AutoPlanner.choose`).
    """

    strategy: str
    reason: str
    predicted_ms: dict[str, float] = field(default_factory=dict)
    background: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The decision as a result records it."""
        return {
            "choice": self.strategy, "reason": self.reason, "background": self.background,
            "predicted_ms": {k: round(v, 2) for k, v in self.predicted_ms.items()},
        }


@dataclass
class Observation:
    """What one classification cost, as the runner measured it (milliseconds and bytes)."""

    strategy: str  # the strategy that was attempted
    head_ms: float | None = None
    attention_ms: float | None = None
    tail_ms: float | None = None
    encode_ms: float | None = None
    network_ms: float | None = None
    server_ms: float | None = None
    total_ms: float | None = None  # the whole classification, as the caller saw it
    bytes_up: int = 0
    bytes_down: int = 0
    failed: bool = False  # the remote part produced no answer (answered locally)
    not_served: bool = False  # the cloud does not serve what this strategy needs
    background: bool = False  # a call beside a local answer (see AutoPlanner.observe)


class AutoPlanner:
    """Chooses a strategy per face from the edge's own measurements (the rule: the module docstring).

    ``candidates``: the concrete strategies allowed (``private`` ones only, when
    the face must stay on the device). ``deadline_s``: the remote deadline, the
    cost charged for a failed remote call. ``explore_every``: faces between
    explorations, at most.
    """

    def __init__(self, candidates: Iterable[str] = CONCRETE_STRATEGIES, deadline_s: float = 1.0, explore_every: int = EXPLORE_EVERY) -> None:
        self.candidates = [s for s in CONCRETE_STRATEGIES if s in set(candidates)]
        if EDGE not in self.candidates:
            self.candidates.insert(0, EDGE)  # the edge can always answer
        self._allowed = set(self.candidates)  # what may ever be chosen (remove() takes from it)
        self._suspended: set[str] = set()  # allowed, but refused by the cloud for now (suspend/resume)
        self.deadline_s = deadline_s
        self.explore_every = max(2, explore_every)
        self.link = LinkEstimate(LINK_ALPHA)
        self._stage = {stage: Ewma(ALPHA) for stage in ("head", "attention", "tail", "encode_image", "encode_features")}
        # The edge's own stages, from its faces in a row alone (see _rested): a remote strategy's head,
        # which runs on the CPU budget its network wait saved, says little of them.
        self._edge_stage = {stage: Ewma(ALPHA) for stage in EDGE_STAGES}
        self._server = {strategy: RecentMedian() for strategy in REMOTE_STRATEGIES}
        self._bytes = {strategy: (Ewma(ALPHA), Ewma(ALPHA)) for strategy in REMOTE_STRATEGIES}
        # Each strategy's own network time: what the link did to its messages (a small one may pass in a
        # shaper's burst that a large one overflows). The link model extrapolates only where a strategy has
        # not been measured for a while, corrected by the model's error on that strategy's own calls.
        self._network = {strategy: Ewma(ALPHA) for strategy in REMOTE_STRATEGIES}
        self._link_bias = {strategy: Ewma(ALPHA) for strategy in REMOTE_STRATEGIES}
        # What a strategy costs beyond its measured parts (preprocessing, decoding the answer, softmax).
        self._overhead = {strategy: Ewma(ALPHA) for strategy in CONCRETE_STRATEGIES}
        self._penalty = {strategy: 0.0 for strategy in REMOTE_STRATEGIES}  # seconds, from failures; cleared by a success
        # Each strategy's recent whole-face latencies (face counter, seconds), for the median among close ones.
        self._totals: dict[str, deque[tuple[int, float]]] = {s: deque(maxlen=RECENT_FACES) for s in CONCRETE_STRATEGIES}
        self._last_seen: dict[str, int] = {}  # face counter at the last observation of each strategy
        self._last_foreground: dict[str, int] = {}  # ... and at its last face of its own (not beside the edge's answer)
        # Remote strategies whose own latest call showed a worse link: a stall of one call or a real
        # change, which re-measuring in the background tells apart while the edge answers.
        self._suspect: set[str] = set()
        # The face at which a strategy's own network time last jumped: what the other strategies
        # measured before it no longer describes the link.
        self._link_changed_at = 0
        self._link_measured_at: int | None = None  # the face of the latest remote call that timed the link
        self._latest_network_s: dict[str, float] = {}  # each remote strategy's latest network time the estimates took in
        self._previous_foreground: str | None = None  # the strategy of the latest face observed (not a background call)
        # How the edge is being re-measured (see _rested): None (it is not), "once" (far behind: one face, which
        # counts), "twice" (two faces in a row, the second the one that counts) or "second" (that one is next).
        self._edge_probe: str | None = None
        self._faces = 0
        self._since_exploration = 0
        self._since_background = 0
        self.current: str | None = None
        self._lock = threading.Lock()

    # -- what the edge tells the planner --------------------------------------------

    def remove(self, strategy: str) -> None:
        """Never choose this strategy (the face must stay on the device, or there is no cloud)."""
        with self._lock:
            self._allowed.discard(strategy)
            self._suspended.discard(strategy)
            self._drop(strategy)

    def suspend(self, strategy: str) -> None:
        """The cloud refuses this strategy now (other weights, the model not served): not chosen until
        :meth:`resume`; the runner asks the cloud again now and then (a rollout finishes, a model loads)."""
        with self._lock:
            self._suspend(strategy)

    def resume(self, strategy: str) -> None:
        """The cloud serves this strategy again with the edge's weights: a candidate again, measured anew
        before it is chosen for its latency. What was measured of it before (its server time, its own
        network time and the link model's error for it, its recent faces) was of another server, and is
        forgotten; the link model and the edge's own stages stay."""
        with self._lock:
            if strategy not in self._suspended:
                return
            self._suspended.discard(strategy)
            self.candidates = [s for s in CONCRETE_STRATEGIES if s in self.candidates or s == strategy]
            self._server[strategy] = RecentMedian()
            self._network[strategy] = Ewma(ALPHA)
            self._link_bias[strategy] = Ewma(ALPHA)
            self._totals[strategy].clear()
            self._latest_network_s.pop(strategy, None)
            self._suspect.discard(strategy)
            self._last_foreground.pop(strategy, None)
            self._last_seen.pop(strategy, None)  # unmeasured: calibrated beside the edge's answers

    @property
    def suspended(self) -> frozenset[str]:
        """The strategies the cloud refuses now (see :meth:`suspend`)."""
        with self._lock:
            return frozenset(self._suspended)

    def _suspend(self, strategy: str) -> None:
        if strategy in self._allowed and strategy != EDGE:
            self._suspended.add(strategy)
        self._drop(strategy)

    def _drop(self, strategy: str) -> None:
        if strategy != EDGE and strategy in self.candidates:
            self.candidates.remove(strategy)
            if self.current == strategy:
                self.current = None

    def observe_rtt(self, seconds: float) -> None:
        """One round trip of a tiny call (see :class:`~edge_client.estimates.RttProbe`)."""
        with self._lock:
            self.link.add_rtt(seconds)

    def observe(self, obs: Observation) -> None:
        """What one face (or one call beside the edge's answer, ``obs.background``) cost."""
        with self._lock:
            face = self._faces
            self._last_seen[obs.strategy] = face
            rested = self._rested(obs)
            if obs.strategy == EDGE and not obs.background:
                self._edge_probe = "second" if rested and self._edge_probe == "twice" else None
            if not obs.background:
                self._last_foreground[obs.strategy] = face
                self._previous_foreground = obs.strategy
            if rested:
                return
            self._suspect.discard(obs.strategy)
            self._observe_compute(obs, face)
            if obs.strategy != EDGE:
                self._observe_remote(obs, face)

    def _observe_compute(self, obs: Observation, face: int) -> None:
        """The edge's stages, and the whole face's latency and overhead."""
        for stage, value in (("head", obs.head_ms), ("attention", obs.attention_ms), ("tail", obs.tail_ms)):
            if value is not None:
                self._stage[stage].update(value / 1000, face)
                if obs.strategy == EDGE:
                    self._edge_stage[stage].update(value / 1000, face)
        if obs.encode_ms is not None and obs.strategy != EDGE and not obs.background:  # beside an inference, it reads slow
            self._stage["encode_image" if obs.strategy == CLOUD else "encode_features"].update(obs.encode_ms / 1000, face)
        if obs.total_ms is not None and not obs.failed:
            self._totals[obs.strategy].append((face, obs.total_ms / 1000))
            parts = (obs.head_ms, obs.attention_ms, obs.tail_ms, obs.encode_ms, obs.network_ms, obs.server_ms)
            self._overhead[obs.strategy].update(max(obs.total_ms - sum(p or 0.0 for p in parts), 0.0) / 1000, face)

    def _observe_remote(self, obs: Observation, face: int) -> None:
        """A remote call: refused, failed, or its bytes, server time and network time."""
        if obs.not_served:
            self._suspend(obs.strategy)
            return
        if obs.failed:  # one server answers for all its models: a failure counts against every remote strategy
            self._penalty = dict.fromkeys(self._penalty, self.deadline_s)
            return
        self._penalty = dict.fromkeys(self._penalty, 0.0)  # ... and so does a success
        up, down = self._bytes[obs.strategy]
        up.update(obs.bytes_up, face)
        down.update(obs.bytes_down, face)
        if obs.server_ms is not None:
            self._server[obs.strategy].update(obs.server_ms / 1000, face)
        if obs.network_ms is None:
            return
        network_s = obs.network_ms / 1000
        expected = self._network_s(obs.strategy)
        if obs.background and network_s > expected:
            # A call beside a local inference waits for the CPU that inference holds, at most about the
            # edge's latency: slower by that much, it does not show a worse link; slower by more, it shows
            # one (or a wrong estimate) by what is left once that wait is taken off.
            allowance = self._predict(EDGE)
            if network_s - expected <= allowance:
                return
            network_s -= allowance
        self._observe_network(obs, network_s, expected, face)

    def _rested(self, obs: Observation) -> bool:
        """Is ``obs`` an edge face right after a remote one? The edge's estimates do not learn from it; if
        it was an exploration, the edge's next face is one too, the one that counts.

        On a CPU-quota device such a face runs on the budget saved while the remote face waited for the
        network, so it shows the edge faster than the faces that follow if auto chooses it, in a row. An
        exploration of an edge predicted beyond ``FAR`` times the best's latency takes one face, which
        counts: that face alone shows the edge still far behind or not, and a second would double what
        re-measuring it costs. Which faces count is settled before they are measured: keeping or dropping
        a face by its latency would bias the estimate wherever there is no saved budget.
        """
        return (
            obs.strategy == EDGE and not obs.background and self._edge_probe != "once"
            and self._previous_foreground not in (None, EDGE)
        )

    def _observe_network(self, obs: Observation, network_s: float, expected: float, face: int) -> None:
        """One remote call's network time: into its strategy's own estimate and the link model, and,
        where it is far from what was predicted for it, a change of the link for every strategy.

        Where its own estimate had only aged out (no change of the link since), the prediction was the link
        model's, and a call far from the model but near that estimate shows the model's error for this
        strategy's messages, not a change of the link."""
        own = self._network[obs.strategy]
        before_change = own.last_face is not None and own.last_face < self._link_changed_at  # measured on another link
        changed = (
            own.value is not None and link_changed(expected, network_s)
            and (before_change or link_changed(own.value, network_s))
        )
        better = changed and network_s < expected
        if changed:
            self._link_changed_at = face
            if not better and not obs.background:
                self._suspect.add(obs.strategy)
        self._link_measured_at = face
        self._latest_network_s[obs.strategy] = network_s
        # The model's error, learned only from the strategy's own calls on the link the model was measured
        # on: learned from a call that met a collapse, the error would be that collapse.
        if not (obs.background or changed or before_change) and self.link.s_per_byte.value is not None:
            modelled = self.link.transfer_s(obs.bytes_up, obs.bytes_down)
            if modelled > 0:
                self._link_bias[obs.strategy].update(min(max(network_s / modelled, MIN_LINK_BIAS), MAX_LINK_BIAS), face)
        # A better link is believed at once: if it was a fluke, the next face shows it. A worse one is averaged
        # in, so that one slow face (a stall of the edge's CPU) does not send the next ones elsewhere.
        if better or before_change:
            own.reset(network_s, face)
        else:
            own.update(network_s, face)
        if better:
            self.link.reset_transfer(network_s, obs.bytes_up, obs.bytes_down, face)
        else:
            self.link.add_transfer(network_s, obs.bytes_up, obs.bytes_down, face)

    # -- prediction ------------------------------------------------------------------

    def _predict(self, strategy: str) -> float:
        """Predicted seconds for one face by ``strategy``."""
        return self._predict_parts(strategy) + self._overhead[strategy].get()

    def _predict_parts(self, strategy: str) -> float:
        if strategy == EDGE:
            return self._without_link_s(strategy)
        return self._without_link_s(strategy) + self._network_s(strategy) + self._penalty[strategy]

    def _without_link_s(self, strategy: str) -> float:
        """Its compute on the edge and, for a remote one, on the server: what no link makes shorter."""
        if strategy == EDGE:
            return sum(self._edge_stage[s].get() for s in EDGE_STAGES)
        return sum(self._stage[s].get() for s in LOCAL_STAGES[strategy]) + self._server[strategy].get()

    def _network_s(self, strategy: str) -> float:
        """Its own recent network time; the link model's extrapolation when that is stale or missing
        (measured long ago, or before a change of the link that another strategy's call showed), times
        the model's error for this strategy's messages: one cost per byte fits neither a shaper's burst,
        which small messages pass in while large ones wait for the rate, nor a fixed cost per call."""
        own = self._network[strategy]
        last = own.last_face
        if own.value is not None and last is not None and self._faces - last < 3 * self.explore_every and last >= self._link_changed_at:
            return own.value
        prior_up, prior_down = PRIOR_BYTES[strategy]
        up, down = self._bytes[strategy]
        return self.link.transfer_s(up.get(prior_up), down.get(prior_down)) * self._link_bias[strategy].get(1.0)

    def predictions_ms(self) -> dict[str, float]:
        """Each candidate's predicted latency now (ms)."""
        with self._lock:
            return {s: self._predict(s) * 1000 for s in self.candidates}

    # -- choice ----------------------------------------------------------------------

    def choose(self, cloud_on_trial: bool = False, background_ready: bool | None = None) -> Decision:
        """The strategy for the next face.

        ``cloud_on_trial``: the circuit breaker admits a trial after finding the cloud
        healthy; with the edge current, the most promising remote strategy is tried now.
        ``background_ready``: ``None`` if the caller cannot re-measure a remote strategy
        in the background, else whether it can on this face (none is in flight). With
        it, while the edge is the choice, remote strategies the link holds beyond ``FAR``
        times its latency, first measurements and trials are measured beside the edge's
        answer (:attr:`Decision.background`); near ones get faces of their own, since a
        call beside a local inference waits for its CPU and reads slow.
        """
        with self._lock:
            self._faces += 1
            usable = list(self.candidates)
            predicted = {s: self._predict(s) * 1000 for s in usable}
            if len(usable) == 1:
                return self._decide(usable[0], ONLY, predicted)
            can_background = background_ready is not None
            background = can_background and bool(background_ready)
            link_busy = can_background and not background_ready  # our own background call is on the link
            unmeasured = [s for s in usable if s not in self._last_seen]
            if unmeasured:
                if unmeasured[0] == EDGE or not can_background:
                    return self._decide(unmeasured[0], CALIBRATING, predicted)
                # the remote ones are first measured beside the edge's answers: no face waits for an unknown link
                return self._decide(EDGE, CALIBRATING, predicted, background=unmeasured[0] if background else None)
            best = min(usable, key=lambda s: predicted[s])
            if link_busy and self.current == EDGE:
                # What the link can do now is being measured: the edge answers until the measurement lands
                # (on a bad link, a call for a face would queue behind it).
                return self._decide(EDGE, FASTEST, predicted)
            if cloud_on_trial and best == EDGE:
                remote = min((s for s in usable if s != EDGE), key=lambda s: self._predict_parts(s))
                if background:
                    return self._decide(EDGE, FASTEST, predicted, background=remote)
                return self._decide(remote, EXPLORING, predicted, keep_current=best)
            return self._choose_measured(usable, predicted, best, background, link_busy)

    def _choose_measured(self, usable: list[str], predicted: dict[str, float], best: str, background: bool, link_busy: bool) -> Decision:
        """The choice once every candidate has been measured: the best score, or an exploration."""
        score = self._scores(usable, best, predicted)
        best = min(usable, key=lambda s: score[s])
        current = self.current if self.current in usable else None
        if current is not None and score[best] > score[current] * (1 - HYSTERESIS):
            best = current
        if self._edge_probe == "second":  # the face of the edge's exploration that counts
            if best != EDGE:
                return self._decide(EDGE, EXPLORING, predicted, keep_current=best)
            self._edge_probe = None  # the edge is the choice: its next face counts anyway
        self._since_exploration += 1
        confirm = None if link_busy else self._confirmation_target(usable, best, predicted)
        if confirm is not None:
            self._since_exploration = 0
            return self._decide(confirm, EXPLORING, predicted, keep_current=best)
        period = self._exploration_period(usable, best, predicted)
        if self._since_exploration >= period and not link_busy:
            target = self._exploration_target(usable, best, predicted, period)
            if target is not None:
                self._since_exploration = 0
                if background and self._far_behind(target, best, predicted):  # re-measured beside the edge's answer
                    return self._decide(best, FASTEST, predicted, background=target)
                if target == EDGE:
                    self._edge_probe = "once" if predicted[EDGE] > FAR * predicted[best] else "twice"
                return self._decide(target, EXPLORING, predicted, keep_current=best)
        return self._decide(best, FASTEST, predicted, background=self._background_target(usable, best, predicted) if background else None)

    def _scores(self, usable: list[str], best: str, predicted: dict[str, float]) -> dict[str, float]:
        """What the choice minimizes: the predictions, or, for the strategies predicted within ``TIE`` of the
        best, the median of their recent faces where at least two have one (near each other, which has the
        lower typical latency depends on each one's spread, which only its recent faces show; far apart, the
        predictions follow a change of the link sooner). The edge counts as close where its recent median
        is: a CPU quota makes its stages bimodal, and two slow faces lift its EWMA out of the tie while its
        typical face is still the fastest. (The edge only: a remote strategy's recent faces lag a worse link.)
        """
        score = dict(predicted)
        recent = {s: m for s in usable if (m := self._recent_median_ms(s)) is not None}
        typical = {s: min(predicted[s], recent[s]) if s == EDGE and s in recent else predicted[s] for s in usable}
        medians = {s: m for s, m in recent.items() if typical[s] <= predicted[best] * (1 + TIE)}
        if len(medians) >= 2:
            score.update(medians)
        return score

    def _recent_median_ms(self, strategy: str) -> float | None:
        """The median of the strategy's last faces, if at least ``MIN_RECENT`` are recent enough to trust."""
        horizon = self._faces - 4 * self.explore_every
        if strategy != EDGE:
            horizon = max(horizon, self._link_changed_at - 1)  # a remote face before a change of the link is stale
        recent = [total for face, total in self._totals[strategy] if face > horizon]
        if len(recent) < MIN_RECENT:
            return None
        return (statistics.median(recent) + self._penalty.get(strategy, 0.0)) * 1000

    def _exploration_period(self, usable: list[str], best: str, predicted: dict[str, float]) -> int:
        """Faces between explorations: half as many while another strategy is predicted within ``TIE``
        (exploring it then costs little, and the comparison by recent faces needs its recent faces)."""
        if any(s != best and predicted[s] <= predicted[best] * (1 + TIE) for s in usable):
            return max(2, self.explore_every // 2)
        return self.explore_every

    def _exploration_interval(self, strategy: str, best: str, predicted: dict[str, float], period: int) -> float:
        """Faces between re-measurements of ``strategy``: ``period`` for one predicted at most ``FAR``
        times the best's latency (or one only re-measuring can show a better link for, see
        :meth:`_link_blind`); beyond, ``period`` times the cube of that ratio, up to
        :data:`MAX_EXPLORATION_STRETCH` periods.

        At ``r`` times the best's latency, re-measuring every ``period * r**3`` faces costs
        ``(r - 1) / r**3 / period`` of the best's latency per face, falling as ``r`` grows. A remote one
        slower than the best even on a free link (:meth:`_beyond_any_link`) waits the longest interval.
        """
        if self._beyond_any_link(strategy, best, predicted):
            return period * MAX_EXPLORATION_STRETCH
        ratio = max(1.0, predicted[strategy] / max(predicted[best], 1e-9))
        if ratio <= FAR or self._link_blind(strategy, best, predicted):
            return period
        return period * min(ratio**3, MAX_EXPLORATION_STRETCH)

    def _beyond_any_link(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """Is remote ``strategy`` slower than the best, by more than ``TIE``, even on a link that costs nothing?

        Its work apart from the network (its compute on the edge, its server time) already is, so no
        better link can make it the fastest, and the link model, whose extrapolation is least sure of
        all, has no say: only its compute or the best's latency changing can, and the best's own faces
        show the latter.
        """
        if strategy in (EDGE, best):
            return False
        return self._floor_ms(strategy) > predicted[best] * (1 + TIE)

    def _floor_ms(self, strategy: str) -> float:
        """Predicted milliseconds of remote ``strategy`` apart from the link."""
        return (self._without_link_s(strategy) + self._overhead[strategy].get()) * 1000

    def _link_blind(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """Could a better link make ``strategy`` the fastest without anything showing it but re-measuring it?

        So while the edge is the current choice and no remote call has timed the link for
        ``explore_every`` faces (the RTT probe alone does not show throughput), for a remote strategy
        whose work apart from the network is predicted below the edge's latency. With a remote strategy
        current, or one just timed, the link model is up to date for every other one.
        """
        if self._link_measured_at is not None and self._faces - self._link_measured_at <= self.explore_every:
            return False
        return self._could_win(strategy, best, predicted)

    def _far_behind(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """With the edge the choice, is remote ``strategy`` predicted beyond ``FAR`` times its latency, or
        would be with its latest network time alone? (A link that collapsed under it is averaged into its
        estimate over a few faces; its latest call shows the collapse at once.)"""
        if best != EDGE or strategy == EDGE:
            return False
        if predicted[strategy] > FAR * predicted[best]:
            return True
        latest = self._latest_network_s.get(strategy)
        if latest is None:
            return False
        return predicted[strategy] + (latest - self._network_s(strategy)) * 1000 > FAR * predicted[best]

    def _could_win(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """With the edge the choice, could a better link make remote ``strategy`` the fastest? Its work apart
        from the link is below the edge's latency."""
        if best != EDGE or strategy == EDGE:
            return False
        return self._floor_ms(strategy) < predicted[best]

    def _background_target(self, usable: list[str], best: str, predicted: dict[str, float]) -> str | None:
        """Every ``explore_every // 2`` faces while the edge is the choice: of the remote strategies that the
        link holds beyond ``FAR`` times the edge's latency and a better one could make the fastest
        (:meth:`_could_win`), the one measured longest ago. (Near ones follow the exploration schedule: a
        better link gains them little, and each set of calls costs CPU here and in the cloud.) A remote
        strategy whose own latest call showed a worse link comes first, at once: if that call was a
        one-off stall, the next faces are its again."""
        if best != EDGE:
            self._since_background = 0
            return None
        suspect = [s for s in usable if s in self._suspect]
        if suspect:
            self._since_background = 0
            return min(suspect, key=lambda s: predicted[s])
        self._since_background += 1
        if self._since_background < max(2, self.explore_every // 2):
            return None
        behind = [s for s in usable if self._far_behind(s, best, predicted) and self._could_win(s, best, predicted)]
        if not behind:
            return None
        self._since_background = 0
        return min(behind, key=lambda s: self._last_seen[s])

    def _confirmation_target(self, usable: list[str], best: str, predicted: dict[str, float]) -> str | None:
        """With the edge the choice: a remote strategy measured only in the background since its last face
        of its own that its latest sample puts near the edge, if that face was ``explore_every`` faces ago
        or more (or it never had one). It gets a face of its own now.

        A call beside the edge's inference reads slow (it waits for the CPU that inference holds): good
        enough to tell far from near, not to rank near ones. Near: within ``FAR`` of the edge; for a
        strategy never measured on a face of its own, within ``FAR`` once the edge's latency is taken off
        its prediction (every sample it has was taken beside the edge).
        """
        if best != EDGE:
            return None
        near = [
            s for s in usable
            if s != EDGE and self._last_foreground.get(s, -1) < self._last_seen.get(s, -1)
            and predicted[s] - (0.0 if s in self._last_foreground else predicted[best]) <= FAR * predicted[best]
            and self._faces - self._last_foreground.get(s, -self.explore_every) >= self.explore_every
        ]
        return min(near, key=lambda s: predicted[s]) if near else None

    def _exploration_target(self, usable: list[str], best: str, predicted: dict[str, float], period: int) -> str | None:
        """Of the strategies due for a re-measurement, the most overdue (relative to its interval)."""
        overdue = {
            s: (self._faces - self._last_seen[s]) / self._exploration_interval(s, best, predicted, period)
            for s in usable
            if s != best
        }
        due = [s for s, ratio in overdue.items() if ratio >= 1.0]
        return max(due, key=lambda s: (overdue[s], -predicted[s])) if due else None

    def _decide(
        self, strategy: str, reason: str, predicted: dict[str, float], keep_current: str | None = None, background: str | None = None,
    ) -> Decision:
        self.current = keep_current or strategy
        return Decision(strategy, reason, predicted, background)

    def state(self) -> dict[str, Any]:
        """The estimates behind the predictions (for logs and benchmarks)."""
        with self._lock:
            throughput = self.link.throughput_bytes_per_s()
            return {
                "current": self.current,
                "candidates": list(self.candidates),
                "suspended": sorted(self._suspended),
                "rtt_ms": round(self.link.rtt_s * 1000, 3),
                "throughput_kbps": None if throughput is None else round(throughput / 1000, 1),
                "stage_ms": {k: round(v.get() * 1000, 3) for k, v in self._stage.items()},
                "edge_stage_ms": {k: round(v.get() * 1000, 3) for k, v in self._edge_stage.items()},
                "server_ms": {k: round(v.get() * 1000, 3) for k, v in self._server.items()},
            }
