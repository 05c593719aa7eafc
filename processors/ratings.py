"""What a rating-like signal says, and how much it is believed. The single source.

Polarity: :func:`polarity` says whether a rating or an engagement signal is for
(+1) or against (-1) the response it is about, or why it says neither. A score on
a scale is for it at :data:`GOOD_SCORE` of the scale or more, against it at
:data:`POOR_SCORE` or less (4 and 5 of 5 are good, 1 and 2 are poor, 3 is
neutral). Aggregation, both synthesizers and the fine-tuning export all call
these functions, so they cannot disagree about what a rating means.

Belief:
A thumbs-up from a person is evidence; engagement (copies, abandonment, dwell
time) and an LLM judge's derived ratings are guesses about what a person would
have said. So implicit signals weigh :data:`IMPLICIT_WEIGHT` of a person's rating
and count only in aggregate: at least :data:`MIN_IMPLICIT_SIGNALS` of them.
Aggregation (which decides when to synthesise) and synthesis (which turns votes
into examples) both use these functions, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from processors.judging import DERIVED_BY_KEY

#: a score at or above this share of its scale is for the response
GOOD_SCORE: Final = 0.8
#: a score at or below this share of its scale is against it; in between is neutral
POOR_SCORE: Final = 0.4
#: a dwell shorter than this (ms) counts against the response
SHORT_DWELL_MS: Final = 5_000

#: why a signal says neither for nor against
NoPolarity = Literal["neutral_rating", "malformed", "uninformative_engagement", "not_rated"]


def rating_fraction(value: Any, score: Any, scale: Any) -> float | None:
    """A rating as a share of its scale in [0, 1]: thumbs up 1.0, thumbs down 0.0.

    None when it carries neither a thumb nor a usable score and scale.
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and value != 0:
        return 1.0 if value > 0 else 0.0
    if not isinstance(score, int | float) or not isinstance(scale, int | float) or scale <= 0:
        return None
    return min(max(float(score) / float(scale), 0.0), 1.0)


def fraction_polarity(fraction: float) -> int:
    """+1 at or above :data:`GOOD_SCORE`, -1 at or below :data:`POOR_SCORE`, else 0."""
    if fraction >= GOOD_SCORE:
        return 1
    if fraction <= POOR_SCORE:
        return -1
    return 0


def polarity(kind: str, payload: Mapping[str, Any] | None) -> int | NoPolarity:
    """+1 for the response, -1 against it, or the reason the signal says neither."""
    payload = payload or {}
    if kind == "rating":
        fraction = rating_fraction(payload.get("value"), payload.get("score"), payload.get("scale"))
        if fraction is None:
            return "malformed"
        return fraction_polarity(fraction) or "neutral_rating"
    if kind == "engagement":
        what, value = payload.get("kind"), payload.get("value")
        if what in ("conversion", "copy"):
            return 1
        if what == "abandon":
            return -1
        if what == "dwell_ms" and isinstance(value, int | float) and value < SHORT_DWELL_MS:
            return -1
        return "uninformative_engagement"
    return "not_rated"


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
