"""How much a rating-like signal is believed: people's ratings over machines' and behaviour.

A thumbs-up from a person is evidence; engagement (copies, abandonment, dwell
time) and an LLM judge's derived ratings are guesses about what a person would
have said. So implicit signals weigh :data:`IMPLICIT_WEIGHT` of a person's rating
and count only in aggregate: at least :data:`MIN_IMPLICIT_SIGNALS` of them.
Aggregation (which decides when to synthesise) and synthesis (which turns votes
into examples) both use these functions, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from processors.judging import DERIVED_BY_KEY

#: weight of one implicit signal (engagement, a judge's rating) against a person's rating
IMPLICIT_WEIGHT: Final = 0.3
#: implicit signals are believed only when at least this many agree to be counted
MIN_IMPLICIT_SIGNALS: Final = 3


def is_derived(payload: Mapping[str, Any] | None) -> bool:
    """A rating a machine derived (the LLM judge), marked by the join stage."""
    return bool(payload and payload.get(DERIVED_BY_KEY))


def is_implicit(evidence: Mapping[str, Any]) -> bool:
    """Engagement, or a derived rating: not something a person said on purpose."""
    return evidence.get("type") == "engagement" or is_derived(evidence.get("payload"))


def weight(evidence: Mapping[str, Any]) -> float:
    """A person's rating counts 1; an implicit signal :data:`IMPLICIT_WEIGHT`."""
    return IMPLICIT_WEIGHT if is_implicit(evidence) else 1.0


def believed_weight(evidence: Iterable[Mapping[str, Any]]) -> tuple[float, set[str]]:
    """Total weight of rated evidence and the users behind it, implicit only in aggregate.

    Implicit signals add nothing until there are :data:`MIN_IMPLICIT_SIGNALS` of them.
    """
    explicit = [e for e in evidence if not is_implicit(e)]
    implicit = [e for e in evidence if is_implicit(e)]
    counted = explicit + (implicit if len(implicit) >= MIN_IMPLICIT_SIGNALS else [])
    return sum(weight(e) for e in counted), {str(e.get("user_id")) for e in counted}
