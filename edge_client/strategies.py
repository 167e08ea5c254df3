"""The edge's vocabulary: who runs what, which cloud model each strategy calls, and why a face went where.

- ``edge``: everything on this device.
- ``cloud``: the face image goes up, class probabilities come back.
- ``split``: the head runs here, the split tensor goes up, the attention (or the
  attended map) comes back and the tail runs here.
- ``split-rest``: the head runs here, the split tensor goes up, class probabilities come back.
- ``auto``: one of the above per face, chosen by :class:`~edge_client.planner.AutoPlanner`.
"""

from __future__ import annotations

from shared_model.protocol import ATTENTION_MODEL, CLASSIFIER_MODEL, REST_MODEL

__all__ = [
    "EDGE", "CLOUD", "SPLIT", "SPLIT_REST", "AUTO", "CONCRETE_STRATEGIES", "REMOTE_STRATEGIES", "PRIVATE_STRATEGIES",
    "STRATEGIES", "MODEL_OF_STRATEGY", "FASTEST", "EXPLORING", "CALIBRATING", "ONLY", "NOT_SERVED_REASONS", "check_choice",
]

EDGE = "edge"
CLOUD = "cloud"
SPLIT = "split"
SPLIT_REST = "split-rest"
AUTO = "auto"
CONCRETE_STRATEGIES = (EDGE, CLOUD, SPLIT, SPLIT_REST)
REMOTE_STRATEGIES = (CLOUD, SPLIT, SPLIT_REST)
PRIVATE_STRATEGIES = (EDGE, SPLIT, SPLIT_REST)  # the face image never leaves the device
STRATEGIES = (*CONCRETE_STRATEGIES, AUTO)

# The cloud model each remote strategy calls.
MODEL_OF_STRATEGY = {CLOUD: CLASSIFIER_MODEL, SPLIT: ATTENTION_MODEL, SPLIT_REST: REST_MODEL}

# Why auto chose what it chose (recorded in every result of auto).
FASTEST = "fastest"
EXPLORING = "exploring"  # re-measuring a strategy it is not using
CALIBRATING = "calibrating"  # first use of a candidate: nothing measured yet
ONLY = "only_candidate"

# Fallback reasons that mean "this cloud cannot serve this strategy", not "it failed this time".
NOT_SERVED_REASONS = ("not_served", "version_mismatch")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (``what`` names the option in the message)."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")
