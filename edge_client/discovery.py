"""Cloud discovery: does the cloud serve what this edge needs, with this edge's weights?

Asked with ``ModelMetadata`` in a background thread, once per connection and again while the
cloud refuses something: a silent link must not hold a face longer than its deadline. The
fingerprint handshake works on both engines: fer-cloud puts the fingerprint in the metadata's
parameters and uses it as the model version; an engine with versions of its own (Triton:
integers, no metadata parameters) keeps it in the model's configuration, and requests then name
the version that holds the edge's weights.

What the cloud refuses is suspended, not dropped: while anything is refused the cloud is asked
again every :data:`REFUSAL_RECHECK_S`, so that a rollout that ends or a model that finishes
loading brings the cloud back to a running edge; a call that meets a refusal discovery did not
know of has the cloud asked again within :data:`RECHECK_FLOOR_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from shared_model.protocol import FINGERPRINT, read_parameters

from .strategies import MODEL_OF_STRATEGY, NOT_SERVED_REASONS
from .transport import CloudClient, RemoteError

__all__ = ["REFUSAL_RECHECK_S", "RECHECK_FLOOR_S", "FIRST_RETRY_S", "Refusal", "refusal_of", "CloudDiscovery"]

log = logging.getLogger(__name__)

REFUSAL_RECHECK_S = 10.0  # while the cloud refuses a strategy, it is asked again this often (seconds)
RECHECK_FLOOR_S = 1.0  # a call that meets a refusal has the cloud asked again this soon, not sooner
FIRST_RETRY_S = 5.0  # until the cloud has answered once, it is asked again this often
Refusal = tuple[str, str]  # (the fallback reason, why)


def refusal_of(client: CloudClient, model: str, fingerprint: str) -> Refusal | None:
    """None when the cloud serves ``model`` with the weights ``fingerprint`` names, else why not.

    On an engine whose versions are its own, records in ``client.engine_versions`` the version
    that holds these weights. Raises :class:`RemoteError` when the cloud cannot be asked.
    """
    try:
        metadata = client.model_metadata(model)
    except RemoteError as error:
        if error.reason in NOT_SERVED_REASONS:
            return error.reason, f"{model}: {error.detail or error.reason}"
        raise
    served = read_parameters(metadata.parameters).get(FINGERPRINT)
    versions = list(metadata.versions)
    if served is None and fingerprint not in versions:
        # An engine with versions of its own keeps the fingerprint in the model's configuration.
        try:
            served = client.model_config_parameters(model).get(FINGERPRINT)
        except RemoteError:
            served = None
        if served == fingerprint and versions:
            client.engine_versions[model] = max(versions, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))
            return None
    if served is not None and served != fingerprint:
        return "version_mismatch", f"{model} holds weights {served}, the edge {fingerprint}"
    if served is None and versions and fingerprint not in versions:
        return "version_mismatch", f"{model} serves versions {versions}, not the edge's {fingerprint}"
    return None


class CloudDiscovery:
    """Asks the cloud what it serves, in the background, and tells the runner.

    ``strategies``: the remote strategies to ask about now. ``apply``: called with each one
    and its :data:`Refusal` (``None``: served) after every answer. ``refusing``: whether
    something is refused now (then the cloud is asked again every ``recheck_s``).
    ``on_first``: called once, after the first answer.
    """

    def __init__(
        self,
        client: CloudClient,
        fingerprint: str,
        strategies: Callable[[], list[str]],
        apply: Callable[[str, Refusal | None], None],
        refusing: Callable[[], bool],
        on_first: Callable[[], None],
        recheck_s: float = REFUSAL_RECHECK_S,
    ) -> None:
        self.client = client
        self.fingerprint = fingerprint
        self.recheck_s = recheck_s
        self._strategies = strategies
        self._apply = apply
        self._refusing = refusing
        self._on_first = on_first
        self._discovered = threading.Event()
        self._first_attempt = threading.Event()  # the first attempt finished, whatever its outcome
        self._closed = False
        self._next = 0.0  # monotonic time before which the cloud is not asked (again)
        self._requested = False  # a call met a refusal or opened the breaker: ask again
        self._lock = threading.Lock()

    def start(self) -> None:
        """Ask the cloud in the background if it is due; never blocks.

        Until it has answered once, a cloud that cannot be asked is asked again
        :data:`FIRST_RETRY_S` later; after that, only while :meth:`_recheck_due`.
        """
        if self._closed or (self._discovered.is_set() and not self._recheck_due()):
            return
        now = time.monotonic()
        if now >= self._next and self._lock.acquire(blocking=False):
            self._next = now + (self.recheck_s if self._discovered.is_set() else FIRST_RETRY_S)
            threading.Thread(target=self._discover_now, name="fer-discovery", daemon=True).start()

    def known(self, deadline: float) -> bool:
        """Has the first answer come? Waits for it until ``deadline`` (a ``perf_counter`` value); at once
        after the first attempt, whatever its outcome."""
        if self._discovered.is_set():
            return True
        return self._first_attempt.wait(max(0.0, deadline - time.perf_counter()))

    def wait(self, timeout_s: float = 5.0) -> bool:
        """Block until the cloud's models and weights are known; True if they are."""
        return self._discovered.wait(timeout_s)

    def after_failure(self, reason: str | None, breaker_open: bool) -> None:
        """A remote call produced no answer. If it met a refusal discovery did not know of (a redeploy, an
        engine's model reloaded as a new version), the cloud is asked again within :data:`RECHECK_FLOOR_S`;
        if calls failed until the breaker opened, at the usual interval. That holds the calls until the
        cloud serves the edge's weights and, on an engine with versions of its own, learns the version that
        holds them now (such an engine may answer a version it unloaded with UNAVAILABLE while its health
        check says SERVING: the breaker's trials alone would fail for ever)."""
        if reason in NOT_SERVED_REASONS:
            self._requested = True
            self._next = min(self._next, time.monotonic() + RECHECK_FLOOR_S)
        elif breaker_open:
            self._requested = True

    def close(self) -> None:
        """Ask no more."""
        self._closed = True

    def _recheck_due(self) -> bool:
        """Is the cloud to be asked again: it refuses something the runner may use, or a call met a refusal
        or opened the breaker?"""
        return self._requested or self._refusing()

    def _discover_now(self) -> None:
        try:
            strategies = self._strategies()
            try:
                refusals = {s: refusal_of(self.client, MODEL_OF_STRATEGY[s], self.fingerprint) for s in strategies}
            except RemoteError as error:
                log.info("cloud metadata unavailable (%s); asking again in %.3g s", error.reason, self._next - time.monotonic())
                return
            except ValueError:  # the runner closed its channel meanwhile
                if self._closed:
                    return
                raise
            self._requested = False
            for strategy, refusal in refusals.items():
                self._apply(strategy, refusal)
            self._next = time.monotonic() + self.recheck_s
            first = not self._discovered.is_set()
            self._discovered.set()
            if first and not self._closed:
                self._on_first()
        finally:
            self._first_attempt.set()
            self._lock.release()
