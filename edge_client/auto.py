"""``auto``: the fastest strategy for the next face, predicted from what this edge measured itself.

The planner keeps passive estimates from the edge's own work and calls:

- compute per local stage (head, local attention, tail, image and tensor encoding), EWMA;
  the edge's own from its faces that follow an edge face alone (one right after a remote
  face runs on CPU-quota budget that face's network wait saved: see
  :meth:`AutoPlanner._rested`), so an exploration of the edge takes two faces in a row;
- server time per remote model (the ``server_us`` each response carries): the
  median of its recent samples (:class:`RecentMedian`), so that one stalled
  answer (a cloud sharing its cores) does not move a strategy off the lead;
- bytes each strategy puts on the wire each way (from its own requests and responses);
- the link: round-trip time (the minimum of recent tiny ``ServerLive`` calls,
  which :class:`RttProbe` makes every few seconds: about 100 bytes each) and the
  cost per byte, ``(network time - RTT) / bytes up and down`` of each remote call, EWMA.

It predicts each candidate's latency (compute + server + network) and uses the
lowest (with the ``median`` objective, the default, candidates predicted within
``tie`` of the best are compared by the median of their recent faces instead); the network time is the strategy's own recent one, or, where it has not
been measured for a while, RTT + bytes / throughput from the link model, times the
model's error on that strategy's own calls (``link_bias``). A challenger must beat the current choice by ``hysteresis``
(relative) to take over, so that two nearly equal strategies do not flap. Every
``explore_every`` faces at most, it runs one other candidate instead, so that a
link that got better is noticed (a link that got worse shows in the current
strategy's own measurements within a few faces, and holds for every strategy
that crosses the link: a network time that doubles or halves, by 5 ms at least,
marks a change of the link, and every remote strategy's network times and
recent faces from before it are set aside, its prediction coming from the link
model until it is measured again (a better link replaces the estimates at once,
a worse one is averaged in; see :meth:`AutoPlanner._observe_network`): each candidate is due every
``explore_every`` faces while predicted within 1.5 times the best's latency,
less often beyond (with the cube of the ratio, up to sixteen times as long:
see :meth:`AutoPlanner._exploration_interval`; as long, too, for a remote
one slower than the best even on a free link), and the most overdue goes
first. The cost of exploring is bounded: at most one face in
``explore_every``, and no exploration costs more than the remote deadline (a
late answer is computed locally). While the edge is the choice, a caller that
can (the runner) re-measures remote strategies in the background instead, and
more often (see :meth:`AutoPlanner.choose`): the face is answered locally, the
calls run beside it and only what they cost reaches the planner, so a link
that came back is noticed within a few faces and noticing costs no face
anything. Such a call can lower a strategy's estimate, and raise it only by
more than the edge's latency: beside a local inference it waits for the CPU.
Two re-checks come at once (``recheck``): a worse network time on a remote
strategy's own face (a stall of that one call, or a real change) has it
re-measured behind the next local answers, so one stalled call costs a face
or two on the edge; and a remote strategy measured only that way since its
last face of its own, and put near the edge, gets a face of its own (see
:meth:`AutoPlanner._confirmation_target`). A remote failure charges every remote strategy the full deadline
until a remote call succeeds again, so a dead or silent cloud is abandoned at
once and re-tried only when exploring.

Thread-safe: one planner may serve a runner used from several threads.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

__all__ = [
    "EDGE", "CLOUD", "SPLIT", "SPLIT_REST", "CONCRETE_STRATEGIES", "REMOTE_STRATEGIES", "PRIVATE_STRATEGIES",
    "MEDIAN", "MEAN", "OBJECTIVES", "FASTEST", "EXPLORING", "CALIBRATING", "ONLY", "PRIOR_BYTES", "Ewma", "RecentMedian", "ESTIMATES", "Decision", "Observation", "LinkEstimate",
    "FAR", "MAX_EXPLORATION_STRETCH", "LINK_CHANGE_FACTOR", "link_changed", "AutoSettings", "AutoPlanner", "RttProbe",
]

EDGE = "edge"
CLOUD = "cloud"
SPLIT = "split"
SPLIT_REST = "split-rest"
CONCRETE_STRATEGIES = (EDGE, CLOUD, SPLIT, SPLIT_REST)
REMOTE_STRATEGIES = (CLOUD, SPLIT, SPLIT_REST)
PRIVATE_STRATEGIES = (EDGE, SPLIT, SPLIT_REST)  # the face image never leaves the device

# What auto minimizes: each face's typical latency (the median of recent faces, where strategies
# are predicted close) or its mean (the predictions alone).
MEDIAN = "median"
MEAN = "mean"
OBJECTIVES = (MEDIAN, MEAN)

# Why auto picked what it picked (recorded in every result).
FASTEST = "fastest"
EXPLORING = "exploring"
CALIBRATING = "calibrating"  # first use of a candidate: nothing measured yet
ONLY = "only_candidate"

# Bytes on the wire before anything is measured (gRPC/HTTP2 framing included), for an 8x28x28 split.
PRIOR_BYTES = {
    CLOUD: (2_000, 170),
    SPLIT: (6_420, 960),
    SPLIT_REST: (6_420, 170),
}


class Ewma:
    """Exponentially weighted moving average over faces; ``None`` until the first sample.

    The weight of the past decays per face, not per sample: a sample taken after
    ``n`` faces without one (an exploration) counts as ``1 - (1 - alpha) ** n``,
    so an estimate refreshed rarely is replaced by its fresh measurement rather
    than averaged with a stale one.
    """

    # A stale estimate is mostly, not wholly, replaced: one unlucky sample (a scheduling
    # stall on a CPU-limited device) must not decide alone until the next exploration.
    MAX_WEIGHT = 0.7

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None
        self._last_face: int | None = None

    def update(self, sample: float, face: int | None = None) -> None:
        steps = 1 if face is None or self._last_face is None else max(1, face - self._last_face)
        self._last_face = face
        if self.value is None:
            self.value = sample
            return
        weight = min(1.0 - (1.0 - self.alpha) ** steps, max(self.alpha, self.MAX_WEIGHT))
        self.value += weight * (sample - self.value)

    def get(self, default: float = 0.0) -> float:
        return default if self.value is None else self.value

    def reset(self, sample: float, face: int | None = None) -> None:
        """Forget the past: the estimate is this sample."""
        self.value = sample
        self._last_face = face

    @property
    def last_face(self) -> int | None:
        """The face counter of the latest sample (``None`` before one, or when updated without one)."""
        return self._last_face


class RecentMedian:
    """The median of the last ``window`` samples taken within ``max_age`` faces of the newest; ``None``
    until the first.

    For a cost that is steady apart from one-off stalls (the server's compute): one sample three
    times the others moves an EWMA by a third of that for the next faces and, if that sends the
    planner elsewhere, until the strategy is measured again; it does not move a median. A lasting
    change shows once it holds for most of the window (three faces of the current strategy). With an
    even count the lower middle value counts, so two samples, one stalled, give the other. Has the part
    of :class:`Ewma`'s interface the server-time estimate uses.
    """

    def __init__(self, window: int = 5, max_age: int = 100) -> None:
        self.window = window
        self.max_age = max_age
        self._samples: deque[tuple[int | None, float]] = deque(maxlen=window)

    def update(self, sample: float, face: int | None = None) -> None:
        self._samples.append((face, sample))

    @property
    def value(self) -> float | None:
        if not self._samples:
            return None
        newest = self._samples[-1][0]
        recent = [v for f, v in self._samples if newest is None or f is None or newest - f <= self.max_age]
        return statistics.median_low(recent)

    def get(self, default: float = 0.0) -> float:
        value = self.value
        return default if value is None else value


# How the planner estimates each remote model's server time (AutoSettings.server_estimate).
ESTIMATES = ("median", "ewma")


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


class LinkEstimate:
    """Round-trip time and cost per byte of the link to the cloud.

    One cost per byte for both directions: a remote call gives one network time
    for its bytes up and down together, and every strategy sends far more up
    than it receives, so the two directions cannot be told apart from its calls.
    """

    def __init__(self, alpha: float = 0.5, rtt_window: int = 5) -> None:
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self.s_per_byte = Ewma(alpha)

    @property
    def rtt_s(self) -> float:
        """Least of the recent tiny-call round trips: queueing behind our own uploads only inflates a sample."""
        return min(self._rtts) if self._rtts else 0.0

    def add_rtt(self, seconds: float) -> None:
        self._rtts.append(seconds)

    def add_transfer(self, network_s: float, bytes_up: int, bytes_down: int, face: int | None = None) -> None:
        """One exchange: its time beyond the RTT, per byte sent either way."""
        total = bytes_up + bytes_down
        if total > 0:
            self.s_per_byte.update(max(network_s - self.rtt_s, 0.0) / total, face)

    def reset_transfer(self, network_s: float, bytes_up: int, bytes_down: int, face: int | None = None) -> None:
        """One exchange that replaces the cost per byte (the link changed)."""
        total = bytes_up + bytes_down
        if total > 0:
            self.s_per_byte.reset(max(network_s - self.rtt_s, 0.0) / total, face)

    def transfer_s(self, bytes_up: float, bytes_down: float) -> float:
        return self.rtt_s + (bytes_up + bytes_down) * self.s_per_byte.get()

    def throughput_bytes_per_s(self) -> float | None:
        spb = self.s_per_byte.value
        return None if spb is None or spb <= 0 else 1.0 / spb


# A strategy's network time this many times what was predicted for it, or this fraction of it, and at
# least LINK_CHANGE_MIN_S away from it: the link changed (a queue or a scheduling stall rarely doubles it).
LINK_CHANGE_FACTOR = 2.0
LINK_CHANGE_MIN_S = 0.005  # beyond a CPU quota's stall (at most 3.75 ms for a quarter of a 5 ms period)


def link_changed(estimate_s: float, sample_s: float, factor: float = LINK_CHANGE_FACTOR) -> bool:
    """Does one network time differ from its strategy's estimate enough to say the link changed?"""
    if abs(sample_s - estimate_s) < LINK_CHANGE_MIN_S:
        return False
    return sample_s >= factor * estimate_s or sample_s * factor <= estimate_s


# A strategy predicted more than FAR times the best's latency is re-measured less often (see
# AutoPlanner._exploration_interval), at most MAX_EXPLORATION_STRETCH exploration periods apart.
FAR = 1.5
MAX_EXPLORATION_STRETCH = 16.0
# Bounds of the link model's correction for one strategy (AutoPlanner._link_bias): a ratio beyond them is a
# stall or a model with nearly nothing to go on, not the model's error for that strategy's messages.
MIN_LINK_BIAS, MAX_LINK_BIAS = 0.2, 20.0
RECENT_FACES = 9  # whole-face latencies kept per strategy for its median
MIN_RECENT = 3  # fewer recent faces than this: no median, the prediction stands


@dataclass(frozen=True)
class AutoSettings:
    """How auto chooses, beyond its defaults (the benchmark's variants set these to compare behaviours).

    ``objective``: :data:`MEDIAN` or :data:`MEAN`; ``far``: beyond this ratio to
    the best, a strategy is re-measured less often (``inf``: every period);
    ``link_change``: a network time this many times its estimate (or this
    fraction of it) marks a change of the link for every strategy (``inf``:
    each strategy learns of a change from its own calls only);
    ``background``: while the edge is the choice, re-measure far remote
    strategies behind local answers rather than on a face of their own;
    ``server_estimate``: each remote model's server time as the median of its
    recent samples (``"median"``, :class:`RecentMedian`) or an EWMA (``"ewma"``);
    ``recheck``: with the edge the choice, re-measure at once a remote strategy
    whose own latest call showed a worse link (in the background), and give a
    face of its own to one that a background measurement put near the edge
    (see :meth:`AutoPlanner._confirmation_target`); ``floor_stretch``: a remote
    strategy slower than the best even on a free link is re-measured at the
    longest interval (see :meth:`AutoPlanner._beyond_any_link`); ``link_bias``:
    the link model's extrapolation for a strategy is corrected by the model's
    error on that strategy's own calls (see :meth:`AutoPlanner._network_s`);
    ``edge_in_a_row``: the edge's latency is learned only from edge faces that
    follow an edge face, and an exploration of the edge takes two faces in a
    row (see :meth:`AutoPlanner._rested`).
    """

    objective: str = MEDIAN
    far: float = FAR
    link_change: float = LINK_CHANGE_FACTOR
    background: bool = True
    server_estimate: str = "median"
    recheck: bool = True
    floor_stretch: bool = True
    link_bias: bool = True
    edge_in_a_row: bool = True

    def planner(self, candidates: Iterable[str], deadline_s: float) -> "AutoPlanner":
        return AutoPlanner(
            candidates, deadline_s=deadline_s, objective=self.objective, far=self.far, link_change=self.link_change,
            background=self.background, server_estimate=self.server_estimate, recheck=self.recheck,
            floor_stretch=self.floor_stretch, link_bias=self.link_bias, edge_in_a_row=self.edge_in_a_row,
        )


class AutoPlanner:
    """Chooses a strategy per face from the edge's own measurements (see the module docstring).

    ``candidates``: the concrete strategies allowed (``private`` ones only, when
    the face must stay on the device). ``deadline_s``: the remote deadline, the
    cost charged for a failed remote call.
    """

    def __init__(
        self,
        candidates: Iterable[str] = CONCRETE_STRATEGIES,
        deadline_s: float = 1.0,
        explore_every: int = 20,
        hysteresis: float = 0.05,
        alpha: float = 0.3,
        link_alpha: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        objective: str = MEDIAN,
        tie: float = 0.15,
        far: float = FAR,
        link_change: float = LINK_CHANGE_FACTOR,
        background: bool = True,
        server_estimate: str = "median",
        recheck: bool = True,
        floor_stretch: bool = True,
        link_bias: bool = True,
        edge_in_a_row: bool = True,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        if server_estimate not in ESTIMATES:
            raise ValueError(f"unknown server_estimate {server_estimate!r}; expected one of {ESTIMATES}")
        self.objective = objective
        self.tie = tie
        self.far = far  # beyond this ratio to the best, re-measured less often (inf: every period)
        self.link_change = link_change
        self.background = background  # far remote strategies re-measured behind the edge's answers
        self.recheck = recheck  # a stalled call or a near background measurement re-checked at once
        self.floor_stretch = floor_stretch  # one slower than the best on a free link: re-measured at the longest interval
        self.link_bias = link_bias  # the link model's extrapolation corrected by its error for each strategy
        self.edge_in_a_row = edge_in_a_row  # the edge learned from its faces in a row only, explored on two
        self.candidates = [s for s in CONCRETE_STRATEGIES if s in set(candidates)]
        if EDGE not in self.candidates:
            self.candidates.insert(0, EDGE)  # the edge can always answer
        self._allowed = set(self.candidates)  # what may ever be chosen (remove() takes from it)
        self._suspended: set[str] = set()  # allowed, but refused by the cloud for now (suspend/resume)
        self.deadline_s = deadline_s
        self.explore_every = max(2, explore_every)
        self.hysteresis = hysteresis
        self.clock = clock
        self.link = LinkEstimate(link_alpha)
        self._stage = {stage: Ewma(alpha) for stage in ("head", "attention", "tail", "encode_image", "encode_features")}
        # The edge's own stages, from its faces in a row alone (with edge_in_a_row, see _rested): a remote
        # strategy's head, which runs on the budget its network wait saved, says little of them.
        self._edge_stage = {stage: Ewma(alpha) for stage in ("head", "attention", "tail")}
        self._alpha = alpha
        self._server_estimate = server_estimate
        self._server: dict[str, Ewma | RecentMedian] = {strategy: self._new_server_estimate() for strategy in REMOTE_STRATEGIES}
        self._bytes = {strategy: (Ewma(alpha), Ewma(alpha)) for strategy in REMOTE_STRATEGIES}
        # Each strategy's own network time: what the link did to its messages (a small one may pass
        # in a shaper's burst that a large one overflows). The link model extrapolates only where a
        # strategy has not been measured for a while.
        self._network = {strategy: Ewma(alpha) for strategy in REMOTE_STRATEGIES}
        # Each strategy's own network time over what the link model predicted for its bytes just before: the
        # model's error for that strategy's messages (see _observe_network), which its extrapolation corrects by.
        self._link_bias = {strategy: Ewma(alpha) for strategy in REMOTE_STRATEGIES}
        # What a strategy costs beyond its measured parts (preprocessing, decoding the answer, softmax):
        # small on a laptop, several milliseconds on a CPU-limited device.
        self._overhead = {strategy: Ewma(alpha) for strategy in CONCRETE_STRATEGIES}
        self._penalty = {strategy: 0.0 for strategy in REMOTE_STRATEGIES}  # seconds, from failures; cleared by a success
        # Each strategy's recent whole-face latencies (face counter, seconds): with the median objective,
        # strategies predicted within ``tie`` of the best are compared by these medians instead.
        self._totals: dict[str, deque[tuple[int, float]]] = {s: deque(maxlen=RECENT_FACES) for s in CONCRETE_STRATEGIES}
        self._last_seen: dict[str, int] = {}  # face counter at the last observation of each strategy
        self._last_foreground: dict[str, int] = {}  # ... and at its last face of its own (not beside the edge's answer)
        # Remote strategies whose own latest call showed a worse link (see link_changed): a stall of one call
        # or a real change, which re-measuring in the background tells apart while the edge answers.
        self._suspect: set[str] = set()
        # The face at which a strategy's own network time last jumped (see link_changed): what the other
        # strategies measured before it no longer describes the link.
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
            self._server[strategy] = self._new_server_estimate()
            self._network[strategy] = Ewma(self._alpha)
            self._link_bias[strategy] = Ewma(self._alpha)
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

    def _new_server_estimate(self) -> Ewma | RecentMedian:
        return RecentMedian() if self._server_estimate == "median" else Ewma(self._alpha)

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
        with self._lock:
            self.link.add_rtt(seconds)

    def observe(self, obs: Observation) -> None:
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
            if obs.strategy == EDGE:
                return
            if obs.not_served:
                self._suspend(obs.strategy)
                return
            if obs.failed:  # one server answers for all its models: a failure counts against every remote strategy
                self._penalty = dict.fromkeys(self._penalty, self.deadline_s)
                return
            self._penalty = dict.fromkeys(self._penalty, 0.0)  # one server answers for all its models
            up, down = self._bytes[obs.strategy]
            up.update(obs.bytes_up, face)
            down.update(obs.bytes_down, face)
            if obs.server_ms is not None:
                self._server[obs.strategy].update(obs.server_ms / 1000, face)
            if obs.network_ms is not None:
                network_s = obs.network_ms / 1000
                expected = self._network_s(obs.strategy)
                if obs.background and network_s > expected:
                    # A call beside a local inference waits for the CPU that inference holds (on a CPU-limited
                    # device, milliseconds, at most about that inference): so slower by that much, it does not
                    # show a worse link. Slower by more, it does (or a wrong estimate, as from a lone call that
                    # passed in a shaper's burst), by what is left once that wait is taken off: taken whole, a
                    # laptop's call beside its two-thread inference marked a change of the link for every
                    # strategy and held the cloud, the fastest, behind the edge.
                    allowance = self._predict(EDGE)
                    if network_s - expected <= allowance:
                        return
                    network_s -= allowance
                self._observe_network(obs, network_s, expected, face)

    def _rested(self, obs: Observation) -> bool:
        """Is ``obs`` an edge face right after a remote one? The edge's estimates do not learn from it
        (``edge_in_a_row``); if it was an exploration, the edge's next face is one too, the one that counts.

        On a CPU-quota device such a face runs on the budget saved while the remote face waited for
        the network (on the phone profile at 700 KB/s: a median 10.2-11.2 ms, as low as 5.6, against
        12.0-15.1 for an edge face after an edge face), so it shows the edge faster than the faces that
        follow if auto chooses it, in a row: auto then went to the edge for one to four slower faces and
        back. An exploration of an edge predicted beyond ``far`` times the best's latency takes one face,
        which counts, as before: that face alone shows the edge still far behind or not, and a second
        would double what re-measuring it costs. (Which faces count is settled before they are measured:
        keeping or dropping a face by its latency would bias the estimate wherever there is no saved
        budget, as on a laptop.)
        """
        return (
            self.edge_in_a_row and obs.strategy == EDGE and not obs.background and self._edge_probe != "once"
            and self._previous_foreground not in (None, EDGE)
        )

    def _observe_network(self, obs: Observation, network_s: float, expected: float, face: int) -> None:
        """One remote call's network time: into its strategy's own estimate and the link model, and,
        where it is far from what was predicted for it, a change of the link for every strategy.

        Where its own estimate had only aged out (no change of the link since), the prediction was the link
        model's, and (with ``link_bias``) a call far from the model but near that estimate shows the model's
        error for this strategy's messages, not a change of the link."""
        own = self._network[obs.strategy]
        before_change = own.last_face is not None and own.last_face < self._link_changed_at  # measured on another link
        changed = (
            own.value is not None and link_changed(expected, network_s, self.link_change)
            and (before_change or not self.link_bias or link_changed(own.value, network_s, self.link_change))
        )
        better = changed and network_s < expected
        if changed:
            self._link_changed_at = face
            if not better and not obs.background and self.recheck:
                self._suspect.add(obs.strategy)
        self._link_measured_at = face
        self._latest_network_s[obs.strategy] = network_s
        # The model's error, not a change of the link: from the strategy's own calls on the link the model
        # was measured on (learned from the call that met a collapse, the crop's error was that collapse,
        # and the crop was held behind split-rest once the link came back).
        if self.link_bias and not (obs.background or changed or before_change) and self.link.s_per_byte.value is not None:
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

    # -- prediction and choice ---------------------------------------------------------

    def _stage_s(self, *stages: str) -> float:
        return sum(self._stage[s].get() for s in stages)

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
            stages = self._edge_stage if self.edge_in_a_row else self._stage
            return sum(stages[s].get() for s in ("head", "attention", "tail"))
        local = {CLOUD: ("encode_image",), SPLIT: ("head", "encode_features", "tail"), SPLIT_REST: ("head", "encode_features")}[strategy]
        return self._stage_s(*local) + self._server[strategy].get()

    def _network_s(self, strategy: str) -> float:
        """Its own recent network time; the link model's extrapolation when that is stale or missing
        (measured long ago, or before a change of the link that another strategy's call showed), times
        the model's error for this strategy's messages where ``link_bias`` (one cost per byte fits
        neither a shaper's burst, which the 48-pixel crop's 1.8 KB pass in while a 6.4 KB split tensor
        waits for the rate, nor a fixed cost per call: on the paper's trace, without it, auto predicted
        ``split-rest``'s faces at 9-17 ms where they took 14-25, docs/network/robust_paper_trace)."""
        own = self._network[strategy]
        last = own.last_face
        if own.value is not None and last is not None and self._faces - last < 3 * self.explore_every and last >= self._link_changed_at:
            return own.value
        prior_up, prior_down = PRIOR_BYTES[strategy]
        up, down = self._bytes[strategy]
        bias = self._link_bias[strategy].get(1.0) if self.link_bias else 1.0
        return self.link.transfer_s(up.get(prior_up), down.get(prior_down)) * bias

    def predictions_ms(self) -> dict[str, float]:
        with self._lock:
            return {s: self._predict(s) * 1000 for s in self.candidates}

    def choose(self, cloud_on_trial: bool = False, background_ready: bool | None = None) -> Decision:
        """The strategy for the next face.

        ``cloud_on_trial``: the circuit breaker has just found the cloud healthy
        again and admits a trial; if the edge is the current choice, the most
        promising remote strategy is tried now rather than at the next exploration.
        ``background_ready``: ``None`` if the caller cannot re-measure a remote
        strategy in the background, else whether it can on this face (none is in
        flight). With it, while the edge is the choice, the remote strategies
        predicted beyond ``far`` times its latency (the link holds them far
        behind) are re-measured that way, beside the edge's answer: when the
        exploration schedule says, and besides, every ``explore_every // 2``
        faces, the one measured longest ago that a better link could make the
        fastest. So is each remote strategy's first measurement, and a trial.
        No face waits for these calls, and a link that came back shows within a
        few faces. Near ones are explored on faces of their own, as before:
        their exact latency decides, a better link gains them little, and a call
        beside a local inference waits for the CPU it holds (here and, on this
        benchmark's one host, in the cloud), so its sample reads slow: it can
        lower a strategy's network estimate, and raise it only by more than the
        edge's latency (:meth:`observe`).
        """
        with self._lock:
            self._faces += 1
            usable = list(self.candidates)
            predicted = {s: self._predict(s) * 1000 for s in usable}
            if len(usable) == 1:
                return self._decide(usable[0], ONLY, predicted)
            can_background = self.background and background_ready is not None
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
                # (a few milliseconds on a good link; on a bad one, a call for a face would queue behind it).
                return self._decide(EDGE, FASTEST, predicted)
            if cloud_on_trial and best == EDGE:
                remote = min((s for s in usable if s != EDGE), key=lambda s: self._predict_parts(s))
                if background:
                    return self._decide(EDGE, FASTEST, predicted, background=remote)
                return self._decide(remote, EXPLORING, predicted, keep_current=best)
            score = self._scores(usable, best, predicted)
            best = min(usable, key=lambda s: score[s])
            current = self.current if self.current in usable else None
            if current is not None and score[best] > score[current] * (1 - self.hysteresis):
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
                        self._edge_probe = "once" if predicted[EDGE] > self.far * predicted[best] else "twice"
                    return self._decide(target, EXPLORING, predicted, keep_current=best)
            return self._decide(best, FASTEST, predicted, background=self._background_target(usable, best, predicted) if background else None)

    def _scores(self, usable: list[str], best: str, predicted: dict[str, float]) -> dict[str, float]:
        """What the choice minimizes: the predictions, or (median objective) for the strategies predicted
        within ``tie`` of the best, the median of their recent faces where at least two have one. The
        edge counts as close where its recent median is: its prediction, an EWMA of stages that a CPU quota
        makes bimodal, leaves the tie after two slow faces while its typical face is still the fastest. (The
        edge only: a remote strategy's recent faces lag a link that got worse, which its prediction follows
        at once; the edge's depend on no link.)

        A prediction sums estimates of means; where two strategies are that close, which has the lower
        typical latency depends on the shape of each one's spread (a CPU quota makes some local faces
        slow), which only their own recent faces show. Far apart, the predictions decide: they follow
        a change of the link within a face or two, a median of recent faces only after several.
        """
        score = dict(predicted)
        if self.objective != MEDIAN:
            return score
        recent = {s: m for s in usable if (m := self._recent_median_ms(s)) is not None}
        typical = {s: min(predicted[s], recent[s]) if s == EDGE and s in recent else predicted[s] for s in usable}
        medians = {s: m for s, m in recent.items() if typical[s] <= predicted[best] * (1 + self.tie)}
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
        """Faces between explorations: half as many while another strategy is predicted within ``tie``
        (exploring it then costs little, and the median objective needs its recent faces)."""
        if self.objective == MEDIAN and any(s != best and predicted[s] <= predicted[best] * (1 + self.tie) for s in usable):
            return max(2, self.explore_every // 2)
        return self.explore_every

    def _exploration_interval(self, strategy: str, best: str, predicted: dict[str, float], period: int) -> float:
        """Faces between re-measurements of ``strategy``: ``period`` for one predicted at most ``far``
        (:data:`FAR`) times the best's latency (or one only re-measuring can show a better link for, see
        :meth:`_link_blind`); beyond, ``period`` times the cube of that ratio, up to
        :data:`MAX_EXPLORATION_STRETCH` periods.

        Re-measuring a strategy costs its face what that strategy is slower: at
        ``r`` times the best's latency, every ``period * r**3`` faces costs
        ``(r - 1) / r**3 / period`` of the best's latency per face, 0.15 /
        ``period`` at r = 1.5, less beyond (0.7 % per strategy at r = 2 with the
        default period of 20, where every 20 faces cost 5 %). Near ones, where a
        wrong estimate matters and a noisy one is soon corrected, are re-measured
        every period; far ones rarely, their predictions following the link
        model meanwhile. A remote one that would be slower than the best even on
        a free link (:meth:`_beyond_any_link`) waits the longest interval.
        """
        if self.floor_stretch and self._beyond_any_link(strategy, best, predicted):
            return period * MAX_EXPLORATION_STRETCH
        ratio = max(1.0, predicted[strategy] / max(predicted[best], 1e-9))
        if ratio <= self.far or self._link_blind(strategy, best, predicted):
            return period
        return period * min(ratio**3, MAX_EXPLORATION_STRETCH)

    def _beyond_any_link(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """Is remote ``strategy`` slower than the best, by more than ``tie``, even on a link that costs nothing?

        Its work apart from the network (its compute on the edge, its server time) already is, so no
        better link can make it the fastest, and the link model, whose extrapolation is least sure of
        all, has no say: only its compute or the best's latency changing can, and the best's own faces
        show the latter. Such a strategy is re-measured at the longest interval, however near the link
        model puts it (fed by the 48-pixel crop's 1.8 KB calls, which pass in a shaper's burst, the model
        is optimistic for a split tensor's 6.4 KB, which wait for the rate).
        """
        if strategy in (EDGE, best):
            return False
        return self._floor_ms(strategy) > predicted[best] * (1 + self.tie)

    def _floor_ms(self, strategy: str) -> float:
        """Predicted milliseconds of remote ``strategy`` apart from the link."""
        return (self._without_link_s(strategy) + self._overhead[strategy].get()) * 1000

    def _link_blind(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """Could a better link make ``strategy`` the fastest without anything showing it but re-measuring it?

        So while the edge is the current choice and no remote call has timed the
        link for ``explore_every`` faces (the RTT probe alone does not show
        throughput), for a remote strategy whose work apart from the network
        (and any failure's penalty) is predicted below the edge's latency. With
        a remote strategy current, or one just timed (the face that showed the
        link got worse), the link model is up to date for every other one.
        """
        if self._link_measured_at is not None and self._faces - self._link_measured_at <= self.explore_every:
            return False
        return self._could_win(strategy, best, predicted)

    def _far_behind(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """With the edge the choice, is remote ``strategy`` predicted beyond ``far`` times its latency, or
        would be with its latest network time alone? (A link that collapsed under it is averaged into its
        estimate over a few faces; its latest call shows the collapse at once.)"""
        if best != EDGE or strategy == EDGE:
            return False
        if predicted[strategy] > self.far * predicted[best]:
            return True
        latest = self._latest_network_s.get(strategy)
        if latest is None:
            return False
        return predicted[strategy] + (latest - self._network_s(strategy)) * 1000 > self.far * predicted[best]

    def _could_win(self, strategy: str, best: str, predicted: dict[str, float]) -> bool:
        """With the edge the choice, could a better link make remote ``strategy`` the fastest? Its work apart
        from the link is below the edge's latency."""
        if best != EDGE or strategy == EDGE:
            return False
        return self._floor_ms(strategy) < predicted[best]

    def _background_target(self, usable: list[str], best: str, predicted: dict[str, float]) -> str | None:
        """Every ``explore_every // 2`` faces while the edge is the choice: of the remote strategies that the
        link holds beyond ``far`` times the edge's latency and a better one could make the fastest
        (:meth:`_could_win`), the one measured longest ago. (Near ones follow the exploration schedule: a
        better link gains them little, and each set of calls costs CPU here and in the cloud.)"""
        if best != EDGE:
            self._since_background = 0
            return None
        suspect = [s for s in usable if s in self._suspect]
        if suspect:  # at once: if its latest call was a one-off stall, the next faces are its again
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

        A call beside the edge's inference reads slow (it waits for the CPU that inference holds, up to
        about the edge's latency): good enough to tell a strategy far behind from a near one, not to rank
        near ones. Near: within ``far`` of the edge; for a strategy never measured on a face of its own,
        within ``far`` once the edge's latency is taken off its prediction (every sample it has was taken
        beside the edge, its server time too: on the benchmark's one host the cloud waits for the same
        CPU). A first measurement taken beside the edge (on the phone profile the cloud read more than
        twice its latency) would otherwise hold a strategy behind the edge until the exploration schedule
        came round.
        """
        if best != EDGE or not self.recheck:
            return None
        near = [
            s for s in usable
            if s != EDGE and self._last_foreground.get(s, -1) < self._last_seen.get(s, -1)
            and predicted[s] - (0.0 if s in self._last_foreground else predicted[best]) <= self.far * predicted[best]
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


class RttProbe:
    """Measures the round trip with tiny calls (``ServerLive``) every ``interval_s`` in a daemon thread."""

    def __init__(self, ping: Callable[[], float | None], on_sample: Callable[[float], None], interval_s: float = 2.0) -> None:
        self._ping = ping
        self._on_sample = on_sample
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtt-probe", daemon=True)

    def start(self) -> "RttProbe":
        self._thread.start()
        return self

    def sample_now(self) -> None:
        seconds = self._ping()
        if seconds is not None:
            self._on_sample(seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_now()

    def stop(self) -> None:
        self._stop.set()
