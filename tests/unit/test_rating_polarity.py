"""One definition of what a rating says, used by aggregation, both synthesizers and export."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from learnloop.export.rows import rating_score, vote
from learnloop.synthesis.parsing import polarity as llm_polarity
from processors.aggregate import apply_signals, stats_view
from processors.policy import ScopePolicy
from processors.ratings import GOOD_SCORE, POOR_SCORE, polarity, rating_fraction
from processors.synthesis.offline import _polarity as offline_polarity

_OFFSETS = itertools.count()


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        ("rating", {"value": 1}, 1),
        ("rating", {"value": -1}, -1),
        ("rating", {"score": 5, "scale": 5}, 1),
        ("rating", {"score": 4, "scale": 5}, 1),
        ("rating", {"score": 3, "scale": 5}, "neutral_rating"),
        ("rating", {"score": 2, "scale": 5}, -1),
        ("rating", {"score": 1, "scale": 5}, -1),
        ("rating", {"score": 8, "scale": 10}, 1),
        ("rating", {"score": 4.5, "scale": 10}, "neutral_rating"),
        ("rating", {"score": 4, "scale": 10}, -1),
        ("rating", {"score": 12, "scale": 10}, 1),  # clipped to the scale
        ("rating", {"score": 3, "scale": 0}, "malformed"),
        ("rating", {}, "malformed"),
        ("engagement", {"kind": "copy", "value": 1}, 1),
        ("engagement", {"kind": "conversion", "value": 1}, 1),
        ("engagement", {"kind": "abandon", "value": 1}, -1),
        ("engagement", {"kind": "dwell_ms", "value": 1200}, -1),
        ("engagement", {"kind": "dwell_ms", "value": 60_000}, "uninformative_engagement"),
        ("engagement", {"kind": "return_visit", "value": 1}, "uninformative_engagement"),
        ("explanation", {"text": "x"}, "not_rated"),
    ],
)
def test_polarity(kind: str, payload: dict[str, Any], expected: object) -> None:
    assert polarity(kind, payload) == expected


def _aggregate_direction(payload: dict[str, Any]) -> int:
    signal = {
        "signal_id": f"s{next(_OFFSETS)}",
        "group": "user:alice",
        "origin": None,
        "event_id": "r",
        "type": "rating",
        "timestamp": 0,
        "user_id": "alice",
        "org_id": None,
        "interaction_id": "i",
        "joined": False,
        "query": None,
        "response": None,
        "payload": payload,
        "flags": [],
    }
    state, _ = apply_signals(None, [(0, signal)], 0, ScopePolicy())  # type: ignore[list-item]
    stats = stats_view(state)
    return stats["thumbs_up"] - stats["thumbs_down"]


GRID = [{"value": 1}, {"value": -1}] + [
    {"score": score, "scale": scale}
    for scale in (5, 7, 10, 100)
    for score in sorted({0, 1, 2, 3, scale * POOR_SCORE, scale // 2, scale * GOOD_SCORE, scale})
]


@pytest.mark.parametrize("payload", GRID, ids=lambda p: "/".join(str(v) for v in p.values()))
def test_every_stage_reads_a_rating_the_same_way(payload: dict[str, Any]) -> None:
    expected = polarity("rating", payload)
    direction = expected if isinstance(expected, int) else 0
    evidence = {"type": "rating", "payload": payload}
    assert _aggregate_direction(payload) == direction  # aggregation's thumbs
    assert offline_polarity(evidence) == expected  # the offline synthesizer
    assert (llm_polarity(evidence) or 0) == direction  # the LLM synthesizer's checks
    fraction = rating_score(payload.get("value"), payload.get("score"), payload.get("scale"))
    assert fraction == rating_fraction(
        payload.get("value"), payload.get("score"), payload.get("scale")
    )
    assert fraction is not None and vote(fraction) == direction  # the fine-tuning export
