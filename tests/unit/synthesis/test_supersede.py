"""A reversed preference supersedes: when a user or team switches to another value of an
exclusive choice (a currency, a package manager), the new rule retires every live rule
that picked the old value, including bare ones ("Euros.") and ones worded with other frame
verbs ("Stick to npm.")."""

from __future__ import annotations

import pytest

from processors.consolidate import DAY_MS, ConsolidationConfig, consolidate
from processors.embedding import HashingEmbedder
from processors.synthesis.text import contradiction
from tests.unit.synthesis.helpers import T0
from tests.unit.synthesis.test_consolidate import rule


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
