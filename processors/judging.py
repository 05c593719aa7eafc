"""Which interactions the LLM judge scores, and the requests that ask it to.

Most interactions get no explicit feedback. The join stage knows, per interaction,
whether any arrived: when an interaction in the judge's sample reaches the end of
its feedback window (``after_ms`` after it arrived) and nobody rated, explained or
edited it, the join emits a :class:`JudgeRequest` (see ``processors/join.py``).
The judge agent serves requests and sends derived ratings back as events.

Sampling is a stable hash of the interaction id, not a coin toss, so a replay or
a second worker asks about the same interactions. Pure: no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Final, TypedDict

#: ``metadata.derived_by`` of events that no person sent (the judge's ratings)
DERIVED_BY_KEY: Final = "derived_by"


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    """What the join needs to pick interactions for the judge (off by default)."""

    sample_rate: float = 0.0
    after_ms: int = 600_000
    seed: str = ""

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0


class JudgeCandidate(TypedDict):
    """What a join slot keeps about a sampled interaction until it is judged or rated."""

    interaction_id: str
    due_ms: int
    team_id: str | None
    org_id: str | None
    metadata: dict[str, str]
    tool_calls: list[dict[str, Any]]


class JudgeRequest(TypedDict):
    """One interaction for the judge; keyed by interaction id on the judge-requests topic.

    ``attempt`` and ``not_before_ms`` are set when the judge could not serve it and
    put it back on its topic for later (never dropped).
    """

    request_id: str
    interaction_id: str
    user_id: str
    team_id: str | None
    org_id: str | None
    metadata: dict[str, str]
    query: str
    response: str
    tool_calls: list[dict[str, Any]]
    timestamp: int
    attempt: int
    not_before_ms: int


def sample_rank(interaction_id: str, seed: str = "") -> float:
    """A stable pseudo-random number in [0, 1) for an interaction (its place in the sample)."""
    value = int.from_bytes(sha256(f"{seed}\x1f{interaction_id}".encode()).digest()[:8], "big")
    return value / 2**64


def sampled(interaction_id: str, rate: float, seed: str = "") -> bool:
    """Whether an interaction is in the judge's sample: a stable hash, not a coin toss."""
    return rate > 0 and sample_rank(interaction_id, seed) < rate


def is_derived(metadata: dict[str, str] | None) -> bool:
    """True for events a machine derived (a judge's rating), not sent by a person."""
    return bool(metadata and metadata.get(DERIVED_BY_KEY))


def retry_delay_s(attempt: int, hint_s: float | None, max_s: float) -> float:
    """Backoff before asking again: the server's hint, else doubling, capped."""
    if hint_s is not None and hint_s > 0:
        return min(max_s, hint_s)
    return min(max_s, 2.0 ** max(1, attempt))


def deferred(
    request: JudgeRequest, now_ms: int, hint_s: float | None, max_s: float
) -> JudgeRequest:
    """The same request, due again after a backoff: it stays in the log until served."""
    attempt = request["attempt"] + 1
    delay_ms = int(retry_delay_s(attempt, hint_s, max_s) * 1000)
    return {**request, "attempt": attempt, "not_before_ms": now_ms + delay_ms}
