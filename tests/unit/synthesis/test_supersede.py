"""A reversed preference supersedes: when a user or team switches to another value of an
exclusive choice (a currency, a package manager), the new rule retires every live rule
that picked the old value, including bare ones ("Euros.") and ones worded with other frame
verbs ("Stick to npm.")."""

from __future__ import annotations

from typing import Any

import pytest

from processors.consolidate import DAY_MS, ConsolidationConfig, consolidate
from processors.embedding import HashingEmbedder
from processors.memory import MemoryItem
from processors.synthesis.text import contradiction
from tests.unit.synthesis.helpers import T0, evidence, synthesizer, trigger
from tests.unit.synthesis.test_consolidate import rule

CONFIG = ConsolidationConfig()
EMBEDDER = HashingEmbedder()


@pytest.mark.parametrize(
    ("new", "olds"),
    [
        (
            "Prices in Swiss francs.",
            ["Quote prices in euros.", "Euros.", "Give prices in euros, not dollars."],
        ),
        ("Show amounts in CHF.", ["Show amounts in euros."]),
        ("Use pnpm now.", ["Stick to npm.", "Use npm, not yarn."]),
        ("Answer in English.", ["German."]),
    ],
)
def test_a_reversed_preference_supersedes_every_rule_for_the_old_value(
    new: str, olds: list[str]
) -> None:
    current = [rule(text, group="user:gil", at=T0, users=["gil"]) for text in olds]
    candidate = rule(new, group="user:gil", at=T0 + DAY_MS, users=["gil"], trigger_id="t2")
    items, changes = consolidate(
        current, [candidate], T0 + DAY_MS, ConsolidationConfig(), HashingEmbedder()
    )
    live = [i["text"] for i in items if i["status"] == "active"]
    assert live == [new]
    superseded = {i["text"] for i in items if i["status"] == "superseded"}
    assert superseded == set(olds)
    assert sum(c["action"] == "superseded" for c in changes) == len(olds)


@pytest.mark.parametrize(
    ("new", "old"),
    [
        ("Quote prices in euros.", "Use the v2 API."),
        ("Use pnpm now.", "Use pnpm in CI."),
        ("Write commit messages in English.", "Use British spelling."),
    ],
)
def test_rules_about_other_things_are_not_superseded(new: str, old: str) -> None:
    assert contradiction(new, old) is None
    assert contradiction(old, new) is None


def _rated(user: str, response: str, value: int, ts: int) -> dict[str, Any]:
    return evidence(
        "rating", user, {"value": value}, ts=ts, query="how much is it?", response=response
    )


def _examples(ratings: list[dict[str, Any]], now: int) -> list[MemoryItem]:
    result = synthesizer().synthesize(trigger("user:gil", ratings), [], now)
    return [i for i in result["items"] if i["kind"] in ("preferred_example", "avoided_example")]


def test_a_preference_changed_in_ratings_only_retires_the_old_rule() -> None:
    """The user never says "francs now": they rate answers in euros down, in francs up."""
    old = rule("Quote prices in euros.", group="user:gil", at=T0, users=["gil"])
    later = T0 + DAY_MS
    ratings = [
        _rated("gil", "The room is 140 euros per night.", -1, later),
        _rated("gil", "The room is 140 euros per night.", -1, later + 1),
        _rated("gil", "The room is 135 Swiss francs per night.", 1, later + 2),
    ]
    items, changes = consolidate([old], _examples(ratings, later + 3), later + 3, CONFIG, EMBEDDER)
    [retired] = [i for i in items if i["item_id"] == old["item_id"]]
    assert retired["status"] == "retired"
    assert "rated-down" in (retired["note"] or "")
    assert any(c["action"] == "retired" and c["item_id"] == old["item_id"] for c in changes)


@pytest.mark.parametrize(
    "ratings",
    [
        # one down-vote is not a change of mind (ratings are noisy)
        [("The room is 140 euros per night.", -1), ("The room is 135 Swiss francs.", 1)],
        # answers in euros rated down, but nothing in another currency rated up
        [("The room is 140 euros per night.", -1), ("The room is 140 euros, no view.", -1)],
    ],
)
def test_a_rule_is_not_retired_on_thin_or_one_sided_ratings(ratings: list[tuple[str, int]]) -> None:
    old = rule("Quote prices in euros.", group="user:gil", at=T0, users=["gil"])
    later = T0 + DAY_MS
    rated = [_rated("gil", text, value, later + n) for n, (text, value) in enumerate(ratings)]
    items, _ = consolidate([old], _examples(rated, later + 9), later + 9, CONFIG, EMBEDDER)
    assert [i["status"] for i in items if i["item_id"] == old["item_id"]] == ["active"]


def test_ratings_older_than_the_rules_last_support_do_not_retire_it() -> None:
    ratings = [
        _rated("gil", "The room is 140 euros per night.", -1, T0),
        _rated("gil", "The room is 140 euros per night.", -1, T0 + 1),
        _rated("gil", "The room is 135 Swiss francs per night.", 1, T0 + 2),
    ]
    old = rule("Quote prices in euros.", group="user:gil", at=T0 + DAY_MS, users=["gil"])
    items, _ = consolidate([old], _examples(ratings, T0 + 3), T0 + DAY_MS, CONFIG, EMBEDDER)
    assert [i["status"] for i in items if i["item_id"] == old["item_id"]] == ["active"]


def test_examples_naming_different_values_are_not_merged_as_near_duplicates() -> None:
    """A down-vote of "140 euros" is no vote about "150 dollars", however alike the texts."""
    dollars, euros = (
        "The double room at the harbour hotel is 150 dollars per night, breakfast included.",
        "The double room at the harbour hotel is 140 euros per night, breakfast included.",
    )
    first = _examples([_rated("gil", dollars, -1, T0)], T0)
    second = _examples([_rated("gil", euros, -1, T0 + 1)], T0 + 1)
    items, _ = consolidate(first, [], T0, CONFIG, EMBEDDER)
    items, changes = consolidate(items, second, T0 + 1, CONFIG, EMBEDDER)
    assert sorted(i["response"] for i in items if i["status"] == "active") == [euros, dollars]
    assert not any(c["action"] == "merged" for c in changes)


def _said(user: str, text: str, ts: int) -> dict[str, Any]:
    return {"user_id": user, "text": text, "timestamp": ts}


def test_a_team_rule_loses_support_when_its_supporters_ask_for_another_value() -> None:
    """Three people made the team's French rule; one now asks for Spanish. Spanish has too
    little support for a team rule, yet the French one no longer has the three it needs."""
    group = "team:tier2"
    french = rule("Answer in French.", group=group, at=T0, users=["eli", "fatima", "gus"])
    said = [_said("eli", "we switched to Spanish, answer in Spanish not French", T0 + DAY_MS)]
    items, changes = consolidate(
        [french], [], T0 + DAY_MS, CONFIG, EMBEDDER, statements=said, min_users=3
    )
    assert items[0]["status"] == "retired"
    assert "support withdrawn" in (items[0].get("note") or "")
    assert [c["action"] for c in changes] == ["retired"]


@pytest.mark.parametrize(
    ("user", "text", "at"),
    [
        ("zoe", "answer in Spanish please", T0 + DAY_MS),  # not one of its supporters
        ("eli", "answer in French, not Spanish", T0 + DAY_MS),  # the same value
        ("eli", "Spanish please", T0 - DAY_MS),  # before the rule's last support
        ("eli", "shorter answers please", T0 + DAY_MS),  # about something else
    ],
)
def test_support_is_withdrawn_only_by_a_supporter_asking_for_another_value_later(
    user: str, text: str, at: int
) -> None:
    group = "team:tier2"
    french = rule("Answer in French.", group=group, at=T0, users=["eli", "fatima", "gus"])
    items, _ = consolidate(
        [french], [], T0 + DAY_MS, CONFIG, EMBEDDER, statements=[_said(user, text, at)], min_users=3
    )
    assert items[0]["status"] == "active"


def test_a_rule_with_enough_supporters_left_stays() -> None:
    group = "team:tier2"
    users = ["eli", "fatima", "gus", "hal"]
    french = rule("Answer in French.", group=group, at=T0, users=users)
    said = [_said("eli", "Spanish please", T0 + DAY_MS)]
    items, _ = consolidate(
        [french], [], T0 + DAY_MS, CONFIG, EMBEDDER, statements=said, min_users=3
    )
    assert items[0]["status"] == "active"
