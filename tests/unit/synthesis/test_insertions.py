"""An edit that only inserts a phrase is a rule when the scope's policy is met: "Include
<phrase>." Phrases tied to one answer (digits), reactions, and phrases a live or new rule
already covers make none."""

from __future__ import annotations

from processors.synthesis.diff import describe_edit
from tests.unit.synthesis.helpers import T0, edit, explanation, synthesizer, trigger

ORIGINAL = "Day 1: the old castle; Day 2: the science museum."
EDITED = (
    "Day 1: the old castle and a pottery workshop with a village potter; Day 2: the science museum."
)


def _rules(result) -> list[str]:
    return [i["text"] for i in result["items"] if i["kind"] == "rule"]


def test_the_inserted_phrase_is_named_without_its_leading_conjunction() -> None:
    diff = describe_edit(ORIGINAL, EDITED)
    assert diff.insertion == "a pottery workshop with a village potter"
    assert describe_edit("Use npm.", "Use pnpm.").insertion is None


def test_one_users_insertion_is_a_rule_in_their_own_group() -> None:
    result = synthesizer().synthesize(
        trigger("user:omar", [edit("omar", ORIGINAL, EDITED)]), [], T0
    )
    assert _rules(result) == ["Include a pottery workshop with a village potter."]


def test_a_team_needs_the_same_insertion_from_enough_users() -> None:
    one = synthesizer().synthesize(trigger("team:trips", [edit("omar", ORIGINAL, EDITED)]), [], T0)
    assert _rules(one) == []
    assert "insertion_below_policy" in {s["reason"] for s in one["skipped"]}
    three = [edit(u, ORIGINAL, EDITED) for u in ("omar", "pia", "quinn")]
    result = synthesizer().synthesize(trigger("team:trips", three), [], T0)
    assert _rules(result) == ["Include a pottery workshop with a village potter."]


def test_answer_specific_or_covered_insertions_make_no_rule() -> None:
    numbered = edit("omar", "The refund is approved.", "Re case 48213: The refund is approved.")
    result = synthesizer().synthesize(trigger("user:omar", [numbered]), [], T0)
    assert _rules(result) == []
    said = explanation("omar", "always add a pottery workshop")
    covered = synthesizer().synthesize(
        trigger("user:omar", [said, edit("omar", ORIGINAL, EDITED)]), [], T0
    )
    assert _rules(covered) == ["Always add a pottery workshop."]
