"""Chatter is not a rule: thanks, sentiment, hedging and the speaker's own plans react to
an answer but carry no instruction, so they must never become a rule (even in a user's
own group, where one explanation is otherwise enough)."""

from __future__ import annotations

import pytest

from processors.synthesis.text import is_chatter, to_imperative
from tests.unit.synthesis.helpers import T0, explanation, synthesizer, trigger

# deliberately not the simulator's chatter strings: other reactions of the same kinds
CHATTER = [
    "Nice one!",
    "Wow.",
    "Hmm, okay.",
    "Good to know",
    "Whatever",
    "Not sure about that",
    "haha",
    "Not helpful",
    "Pretty weird answer tbh",
    "I'll read it later",
    "Let me think about it.",
    "Interesting, thanks!",
    "Great answer!",
]

INSTRUCTIONS = [
    ("English, please!", "English."),
    ("Too long.", "Too long."),
    ("Keep it simple", "Keep it simple."),
    ("Meh. Use v2 next time.", "Use v2."),
    ("I need prices in euros", "I need prices in euros."),
    ("no emojis please", "No emojis."),
]


@pytest.mark.parametrize("text", CHATTER)
def test_chatter_is_not_a_rule(text: str) -> None:
    assert is_chatter(text)
    assert to_imperative(text) == ""


@pytest.mark.parametrize(("text", "rule"), INSTRUCTIONS)
def test_short_instructions_still_become_rules(text: str, rule: str) -> None:
    assert not is_chatter(text)
    assert to_imperative(text) == rule


def test_chatter_makes_no_rule_in_a_users_own_group() -> None:
    items = [explanation("erin", text) for text in CHATTER]
    items.append(explanation("erin", "please answer in German"))
    result = synthesizer().synthesize(trigger("user:erin", items), [], T0)
    assert [i["text"] for i in result["items"] if i["kind"] == "rule"] == ["Answer in German."]
    skipped = [s for s in result["skipped"] if s["reason"] == "not_actionable"]
    assert len(skipped) == len(CHATTER)
    assert all("reaction" in s["detail"] for s in skipped)
