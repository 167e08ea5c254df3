"""The edge runner: one face in, exactly one result out, by the chosen strategy or locally.

The strategies are named in :mod:`edge_client.strategies`; what goes on the wire is set by
:class:`~edge_client.wire_options.WireOptions`; ``auto`` asks
:class:`~edge_client.planner.AutoPlanner` per face, and re-measures a remote strategy behind a
local answer when the planner says so; what the cloud serves comes from
:class:`~edge_client.discovery.CloudDiscovery`.

Any remote failure (error, timeout, refusal, version mismatch, open circuit, a
malformed answer, even a bug on the remote path) is answered locally from the
same weights, reusing the head's output when the strategy already computed it;
the result says so and why.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from shared_model import codec
from shared_model.offload import apply_attention
from shared_model.preprocessing import pixels_to_array
from shared_model.protocol import ATTENTION_MODEL, CHANNEL_ATTENTION, FEATURES, PROBABILITIES, REST_MODEL, SPATIAL_ATTENTION
from shared_model.runtimes import Backend, as_backend, softmax

from .breaker import HALF_OPEN, OPEN, CircuitBreaker
from .discovery import REFUSAL_RECHECK_S, CloudDiscovery, Refusal
from .estimates import RttProbe, link_changed
from .planner import AutoPlanner, Decision, Observation
from .strategies import (
    AUTO, CLOUD, CONCRETE_STRATEGIES, EDGE, MODEL_OF_STRATEGY, NOT_SERVED_REASONS, PRIVATE_STRATEGIES, REMOTE_STRATEGIES, SPLIT,
    SPLIT_REST, STRATEGIES, check_choice,
)
from .transport import CloudClient, RemoteCall, RemoteError
from .wire_options import WireOptions

log = logging.getLogger(__name__)

__all__ = ["Latency", "FaceResult", "EdgeRunner"]


@dataclass
class Latency:
    """Milliseconds spent in each part of one classification."""

    head: float = 0.0
    encode: float = 0.0
    network: float = 0.0
    server: float = 0.0
    attention: float = 0.0  # the attention stage run here (edge strategy and fallbacks)
    tail: float = 0.0
    total: float = 0.0


@dataclass
class FaceResult:
    """One face's answer: its label and probabilities, who produced it and why, and what it cost."""

    label: str
    probabilities: dict[str, float]
    strategy: str  # what produced the answer: edge, cloud, split or split-rest
    requested_strategy: str
    fallback: bool = False
    fallback_reason: str | None = None
    latency: Latency = field(default_factory=Latency)
    bytes_up: int = 0
    bytes_down: int = 0
    auto: dict[str, Any] | None = None  # with strategy auto: its choice, why, and each candidate's predicted ms

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (a record's fields)."""
        return asdict(self)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class EdgeRunner:
    """Classifies prepared faces (uint8 (S, S, 3)) with a strategy and local fallback.

    ``model`` is a :class:`~shared_model.runtimes.Backend` or a PyTorch ``FERNet``.
    ``wire``: what goes on the wire. With ``private`` the face image never leaves the
    device (``cloud`` is refused, ``auto`` never picks it). ``background_measuring``:
    while auto answers on the edge, it re-measures remote strategies with calls beside
    the local answers (off: on faces of their own, fewer bytes on a metered link).
    ``refusal_recheck_s``: how often a cloud that refuses something is asked again.
    """

    def __init__(
        self,
        model: Backend | object,
        strategy: str = EDGE,
        client: CloudClient | None = None,
        breaker: CircuitBreaker | None = None,
        wire: WireOptions = WireOptions(),
        timeout_s: float = 1.0,
        use_stream: bool = False,
        private: bool = False,
        background_measuring: bool = True,
        refusal_recheck_s: float = REFUSAL_RECHECK_S,
    ) -> None:
        check_choice("strategy", strategy, STRATEGIES)
        if strategy not in (EDGE, AUTO) and client is None:
            raise ValueError(f"strategy {strategy!r} needs a cloud address")
        if private and strategy == CLOUD:
            raise ValueError("strategy 'cloud' sends the face image, which --private forbids; use edge, split, split-rest or auto")
        self.backend = as_backend(model)
        self.config = self.backend.config
        self.class_names = self.config.class_names
        self.strategy = strategy
        self.client = client
        self.breaker = breaker or CircuitBreaker(probe=(lambda: client.healthy(min(0.25, timeout_s))) if client else None)
        self.wire = wire
        self.timeout_s = timeout_s
        self.use_stream = use_stream
        self.private = private
        self.background_measuring = background_measuring
        self.planner: AutoPlanner | None = None
        self._probe: RttProbe | None = None
        self._warm = False
        self._refusal: Refusal | None = None  # why a fixed remote strategy must not call this cloud
        self._closed = False
        self._background: threading.Thread | None = None  # auto's re-measurement behind a local answer, if in flight
        self._background_lock = threading.Lock()
        if strategy == AUTO:
            self._start_auto()
        self.discovery = None if client is None else CloudDiscovery(
            client, self.backend.fingerprint, self._strategies_to_check, self._apply_refusal, self._refusing, self._on_first_discovery,
            refusal_recheck_s,
        )
        self._run_strategy: dict[str, Callable[[np.ndarray, np.ndarray | None, float], FaceResult]] = {
            EDGE: lambda pixels, crop, deadline: self._local(pixels_to_array(pixels), Latency()),
            CLOUD: self._cloud,
            SPLIT: self._split,
            SPLIT_REST: self._split_rest,
        }

    def _start_auto(self) -> None:
        allowed = PRIVATE_STRATEGIES if self.private else CONCRETE_STRATEGIES
        remote = [s for s in allowed if s in REMOTE_STRATEGIES] if self.client else []
        self.planner = AutoPlanner([EDGE, *remote], self.timeout_s)
        if self.client is not None:
            client = self.client
            self._probe = RttProbe(lambda: client.round_trip(min(0.5, self.timeout_s)), self.planner.observe_rtt)

    # -- the one public call ----------------------------------------------------------

    def classify(self, pixels: np.ndarray, crop: np.ndarray | None = None) -> FaceResult:
        """Exactly one result for one face; never raises for a remote failure.

        ``pixels``: the prepared face (uint8 (S, S, 3)); ``crop``: the face as found in
        the frame (gray or BGR, any size), which the cloud strategy sends instead of
        the upscaled pixels when given.
        """
        if self.strategy == AUTO and not self._warm:
            self._warm_up()  # once: a first inference is no measure of the next, so not part of any face's latency
        started = time.perf_counter()
        deadline = started + self.timeout_s  # one deadline for the whole face, the wait for ModelMetadata included
        if self.discovery is not None:
            self.discovery.start()
        decision: Decision | None = None
        strategy = self.strategy
        if strategy == AUTO:
            if self.breaker.state == OPEN:
                self.breaker.allow()  # starts the health probe when it is due; never blocks
            decision = self._choose(cloud_on_trial=self.breaker.state == HALF_OPEN, background_ready=not self.measuring_in_background())
            strategy = decision.strategy
        known = strategy == EDGE or self._discovery_known(deadline)  # the first remote face waits for ModelMetadata, within its deadline
        waited = time.perf_counter() - started
        if decision is not None and strategy not in self.planner.candidates:  # type: ignore[union-attr]
            # what the cloud said meanwhile rules this strategy out (other weights, model not served)
            decision = self._choose(cloud_on_trial=False, background_ready=None)
            strategy = decision.strategy
        refusal = self._refusal  # read once: the discovery thread may clear it meanwhile
        try:
            if not known:  # the cloud did not say what it serves within the deadline
                result = self._local(pixels_to_array(pixels), Latency(), "timeout")
            elif refusal is not None and strategy != EDGE:  # the cloud holds other weights or lacks the model: no call until it changes
                result = self._local(pixels_to_array(pixels), Latency(), refusal[0])
            elif decision is not None and decision.background is not None:
                result = self._local_measuring(decision.background, pixels, crop)
            else:
                result = self._run_strategy[strategy](pixels, crop, deadline)
        except Exception as error:  # a bug on the remote path must not lose the face
            if strategy == EDGE:
                raise
            log.exception("the %s path failed; answering locally", strategy)
            self.breaker.release_trial()  # a trial this face held is not left taken
            result = self._local(pixels_to_array(pixels), Latency(), f"edge_error: {type(error).__name__}")
        result.requested_strategy = self.strategy
        result.latency.total = _ms(time.perf_counter() - started)
        if decision is not None:
            result.auto = decision.to_dict()
            # What the strategy costs, without this face's one-off wait for the cloud's metadata.
            self.planner.observe(_observation(strategy, result, waited_ms=_ms(waited)))  # type: ignore[union-attr]
        if result.fallback and (refusal is None or result.fallback_reason != refusal[0]):
            self._after_failed_call(result.fallback_reason)
        return result

    def _choose(self, cloud_on_trial: bool, background_ready: bool | None) -> Decision:
        """Auto's decision; a runner that does not measure in the background tells the planner it cannot."""
        return self.planner.choose(cloud_on_trial, background_ready if self.background_measuring else None)  # type: ignore[union-attr]

    def _after_failed_call(self, reason: str | None) -> None:
        """A remote call (a face's or a background one) produced no answer: discovery decides whether to ask
        the cloud again (see :meth:`CloudDiscovery.after_failure`)."""
        if self.discovery is not None:
            self.discovery.after_failure(reason, self.breaker.state == OPEN)

    def measuring_in_background(self) -> bool:
        """Is a re-measurement of a remote strategy (auto's, behind a local answer) in flight?"""
        return self._background is not None and self._background.is_alive()

    def wait_for_background(self, timeout_s: float | None = None) -> bool:
        """Block until no re-measurement is in flight (a benchmark's turn ends with its own work); True if none is."""
        background = self._background
        if background is not None:
            background.join(timeout_s)
        return not self.measuring_in_background()

    def close(self) -> None:
        """Stop the RTT probe and close the connection to the cloud."""
        self._closed = True
        if self.discovery is not None:
            self.discovery.close()
        if self._probe is not None:
            self._probe.stop()
        if self.client is not None:
            self.client.close()

    def _warm_up(self) -> None:
        """Run each local stage once, untimed: a first inference (lazy initialisation) is no measure of the next."""
        size = self.config.input_size
        z = self.backend.head(np.zeros((1, 3, size, size), dtype=np.float32))
        self.backend.tail(self.backend.cloud(z))
        self._warm = True

    # -- what the cloud serves (asked by self.discovery) --------------------------------

    def wait_for_discovery(self, timeout_s: float = 5.0) -> bool:
        """Block until the cloud's models and weights are known (for tests and tools); True if they are."""
        return self.discovery is None or self.discovery.wait(timeout_s)

    def _discovery_known(self, deadline: float) -> bool:
        """Has the first answer about what the cloud serves come? Waits for it until ``deadline``."""
        return self.discovery is None or self.discovery.known(deadline)

    def _strategies_to_check(self) -> list[str]:
        """The remote strategies discovery asks about: auto's candidates and suspended ones, or the fixed one."""
        if self.strategy != AUTO:
            return [self.strategy]
        planner = self.planner
        return [s for s in REMOTE_STRATEGIES if s in planner.candidates or s in planner.suspended]  # type: ignore[union-attr]

    def _refusing(self) -> bool:
        """Does the cloud refuse, for now, what this runner's strategy needs (or one that auto may use)?"""
        return self._refusal is not None or bool(self.planner is not None and self.planner.suspended)

    def _on_first_discovery(self) -> None:
        """The cloud has answered once: the round trip is measured from now on."""
        if self._probe is not None and not self._closed:
            self._probe.sample_now()
            self._probe.start()

    def _apply_refusal(self, strategy: str, refusal: Refusal | None) -> None:
        """What the cloud said of ``strategy``'s model: refused (until it says otherwise) or served."""
        refused_before = strategy in self.planner.suspended if self.strategy == AUTO else self._refusal is not None  # type: ignore[union-attr]
        if refusal is not None and not refused_before:
            log.warning("%s will not use the cloud until it changes (asked again every %.3g s): %s", strategy, self.discovery.recheck_s, refusal[1])  # type: ignore[union-attr]
        elif refusal is None and refused_before:
            log.warning("%s uses the cloud again: it serves %s with the edge's weights", strategy, MODEL_OF_STRATEGY[strategy])
        if self.strategy != AUTO:
            self._refusal = refusal
        elif refusal is not None:
            self.planner.suspend(strategy)  # type: ignore[union-attr]
        else:
            self.planner.resume(strategy)  # type: ignore[union-attr]

    # -- strategies -------------------------------------------------------------------

    def _head(self, x: np.ndarray, latency: Latency) -> np.ndarray:
        t0 = time.perf_counter()
        z = self.backend.head(x)
        latency.head = _ms(time.perf_counter() - t0)
        return z

    def _local(self, x: np.ndarray, latency: Latency, reason: str | None = None) -> FaceResult:
        return self._finish_locally(self._head(x, latency), latency, reason)

    def _finish_locally(self, z: np.ndarray, latency: Latency, reason: str | None) -> FaceResult:
        t0 = time.perf_counter()
        attended = self.backend.cloud(z)
        t1 = time.perf_counter()
        scores = self.backend.tail(attended)
        latency.attention = _ms(t1 - t0)
        latency.tail = _ms(time.perf_counter() - t1)
        return self._result(softmax(scores)[0], EDGE, latency, reason)

    def _send_features(self, model: str, z: np.ndarray, latency: Latency, deadline: float, outputs: tuple[str, ...] = ()) -> RemoteCall | str:
        """The split tensor to ``model``: the call, or the reason it produced nothing usable."""
        if not self.breaker.allow():
            return "circuit_open"
        t0 = time.perf_counter()
        try:
            request = self.client.features_request(model, z, self.wire.encoding, outputs)  # type: ignore[union-attr]
        except codec.CodecError as error:
            self.breaker.release_trial()
            return f"encode_error: {error}"
        latency.encode = _ms(time.perf_counter() - t0)
        try:
            return self._call(request, deadline)
        except RemoteError as error:
            return error.reason

    def _split(self, pixels: np.ndarray, crop: np.ndarray | None, deadline: float) -> FaceResult:
        latency = Latency()
        z = self._head(pixels_to_array(pixels), latency)
        lean = self.wire.split_returns == "attention"
        call = self._send_features(ATTENTION_MODEL, z, latency, deadline, self.wire.requested_outputs(SPLIT))
        if isinstance(call, str):
            return self._finish_locally(z, latency, call)
        t0 = time.perf_counter()
        attended = apply_attention(z, call.outputs[SPATIAL_ATTENTION], call.outputs[CHANNEL_ATTENTION]) if lean else call.outputs[FEATURES]
        scores = self.backend.tail(attended)
        latency.tail = _ms(time.perf_counter() - t0)
        return self._remote_result(softmax(scores)[0], SPLIT, latency, call)

    def _split_rest(self, pixels: np.ndarray, crop: np.ndarray | None, deadline: float) -> FaceResult:
        latency = Latency()
        z = self._head(pixels_to_array(pixels), latency)
        call = self._send_features(REST_MODEL, z, latency, deadline)
        if isinstance(call, str):
            return self._finish_locally(z, latency, call)
        if not self._usable(SPLIT_REST, call):
            self.breaker.record_failure()
            return self._finish_locally(z, latency, "invalid_response")
        return self._remote_result(call.outputs[PROBABILITIES][0], SPLIT_REST, latency, call)

    def _cloud(self, pixels: np.ndarray, crop: np.ndarray | None, deadline: float) -> FaceResult:
        latency = Latency()
        if not self.breaker.allow():
            return self._local(pixels_to_array(pixels), latency, "circuit_open")
        t0 = time.perf_counter()
        request = self.client.image_request(self.wire.encode_image(pixels, crop))  # type: ignore[union-attr]
        latency.encode = _ms(time.perf_counter() - t0)
        try:
            call = self._call(request, deadline)
        except RemoteError as error:
            return self._local(pixels_to_array(pixels), latency, error.reason)
        if not self._usable(CLOUD, call):
            self.breaker.record_failure()
            return self._local(pixels_to_array(pixels), latency, "invalid_response")
        return self._remote_result(call.outputs[PROBABILITIES][0], CLOUD, latency, call)

    # -- auto: a remote strategy re-measured behind a local answer ---------------------

    def _local_measuring(self, strategy: str, pixels: np.ndarray, crop: np.ndarray | None) -> FaceResult:
        """The face answered here, as by ``edge``; meanwhile ``strategy`` is called on the same face in a
        background thread, with a deadline of its own, and only what it cost goes to the planner.

        The cloud strategy's call starts at once, a split's once the head has run (it needs the split
        tensor, which the local answer uses too)."""
        latency = Latency()
        x = pixels_to_array(pixels)
        if strategy == CLOUD:
            self._start_background(strategy, lambda: self.client.image_request(self.wire.encode_image(pixels, crop)))  # type: ignore[union-attr]
            z = self._head(x, latency)
        else:
            z = self._head(x, latency)
            model, outputs = MODEL_OF_STRATEGY[strategy], self.wire.requested_outputs(strategy)
            self._start_background(strategy, lambda: self.client.features_request(model, z, self.wire.encoding, outputs))  # type: ignore[union-attr]
        return self._finish_locally(z, latency, None)

    def _start_background(self, strategy: str, make_request: Callable[[], Any]) -> None:
        """At most one in flight: a face classified on another thread meanwhile may have started one."""
        with self._background_lock:
            if self.measuring_in_background():
                return
            self._background = threading.Thread(target=self._measure, args=(strategy, make_request), name="fer-auto-background", daemon=True)
            self._background.start()

    def _measure(self, strategy: str, make_request: Callable[[], Any]) -> None:
        """Calls of ``strategy`` back to back until two in a row agree on the network time (within the
        factor that marks a change of the link), three at most; what the last cost goes to the planner.
        Each answer is checked as a real one would be, then dropped.

        In use, a strategy's calls follow each other. A lone call after the link was idle can pass in a
        shaper's burst (the benchmark's token buckets hold 3,000 bytes) that calls in a row overflow, so a
        collapsed link would look recovered; the calls after it spend the burst and show the rate.
        """
        try:
            previous: float | None = None
            for attempt in range(3):
                observation = self._measure_once(strategy, make_request)
                if observation is None:
                    return
                network_s = (observation.network_ms or 0.0) / 1000
                settled = previous is not None and not link_changed(previous, network_s)
                if observation.failed or settled or attempt == 2:
                    self.planner.observe(observation)  # type: ignore[union-attr]
                    return
                previous = network_s
        except Exception:  # a bug here must not leave a trial taken; no face depends on this call
            log.exception("auto's background measurement of %s failed", strategy)
            self.breaker.release_trial()

    def _measure_once(self, strategy: str, make_request: Callable[[], Any]) -> Observation | None:
        """One background call: what it cost, or ``None`` if the circuit allows none now."""
        if not self.breaker.allow():
            return None
        t0 = time.perf_counter()
        request = make_request()
        encode_ms = _ms(time.perf_counter() - t0)
        try:
            call = self._call(request, time.perf_counter() + self.timeout_s)
        except RemoteError as error:
            self._after_failed_call(error.reason)
            return Observation(strategy, encode_ms=encode_ms, failed=True, not_served=error.reason in NOT_SERVED_REASONS, background=True)
        if not self._usable(strategy, call):
            self.breaker.record_failure()
            return Observation(strategy, encode_ms=encode_ms, failed=True, background=True)
        self.breaker.record_success()
        return Observation(
            strategy, encode_ms=encode_ms, network_ms=_ms(call.network_s), server_ms=_ms(call.server_s),
            bytes_up=call.bytes_up, bytes_down=call.bytes_down, background=True,
        )

    def _usable(self, strategy: str, call: RemoteCall) -> bool:
        """Does the answer hold what ``strategy`` needs, in the shape the edge uses?"""
        if strategy != SPLIT:
            probabilities = call.outputs.get(PROBABILITIES)
            return probabilities is not None and probabilities[0].size == len(self.class_names)
        return all(name in call.outputs for name in self.wire.requested_outputs(SPLIT) or (FEATURES,))

    # -- helpers ----------------------------------------------------------------------

    def _call(self, request: Any, deadline: float) -> RemoteCall:
        """One remote call within what is left of the face's deadline; a failure is recorded here, a
        success only once its answer proved usable."""
        left = deadline - time.perf_counter()
        if left <= 0.001:  # the wait for the cloud's metadata used it up: no call that could not answer in time
            self.breaker.release_trial()
            raise RemoteError("timeout", "the face's deadline passed before the call")
        try:
            return self.client.infer(request, left, self.use_stream)  # type: ignore[union-attr]
        except RemoteError:
            self.breaker.record_failure()
            raise

    def _remote_result(self, probabilities: np.ndarray, strategy: str, latency: Latency, call: RemoteCall) -> FaceResult:
        self.breaker.record_success()
        latency.server = _ms(call.server_s)
        latency.network = _ms(call.network_s)
        result = self._result(probabilities, strategy, latency, None)
        result.bytes_up, result.bytes_down = call.bytes_up, call.bytes_down
        return result

    def _result(self, probabilities: np.ndarray, produced_by: str, latency: Latency, reason: str | None) -> FaceResult:
        values = [float(p) for p in probabilities]
        return FaceResult(
            label=self.class_names[int(np.argmax(values))],
            probabilities={name: round(p, 6) for name, p in zip(self.class_names, values)},
            strategy=produced_by,
            requested_strategy=self.strategy,
            fallback=reason is not None,
            fallback_reason=reason,
            latency=latency,
        )


def _observation(strategy: str, result: FaceResult, waited_ms: float = 0.0) -> Observation:
    """What auto learns from one result of ``strategy`` (a stage that did not run reads 0 and is skipped),
    less ``waited_ms`` the face spent waiting for the cloud's metadata."""
    lat = result.latency
    remote_ok = strategy != EDGE and not result.fallback
    return Observation(
        strategy=strategy,
        head_ms=lat.head or None,
        attention_ms=lat.attention or None,
        tail_ms=lat.tail or None,
        encode_ms=lat.encode or None,
        total_ms=max(lat.total - waited_ms, 0.0),
        network_ms=lat.network if remote_ok else None,
        server_ms=lat.server if remote_ok else None,
        bytes_up=result.bytes_up,
        bytes_down=result.bytes_down,
        failed=strategy != EDGE and result.fallback,
        not_served=result.fallback_reason in NOT_SERVED_REASONS,
    )
