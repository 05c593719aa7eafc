"""Derived (LLM judge) and implicit ratings weigh below people's and count only in aggregate."""

from __future__ import annotations

import itertools

from processors.aggregate import apply_signals, stats_view
from processors.join import JoinConfig, process_event
from processors.policy import LearningPolicy, ScopePolicy
from processors.ratings import IMPLICIT_WEIGHT, MIN_IMPLICIT_SIGNALS, believed_weight, weight
from schemas import from_json_event
from tests.factories import feedback, interaction
from tests.unit.synthesis.helpers import T0, evidence, synthesizer, trigger

POLICY = LearningPolicy()
JUDGED = {"derived_by": "llm_judge"}
_OFFSETS = itertools.count()


def signals(events: list[dict], group: str) -> list[tuple[int, dict]]:
    """Signals as the join emits them (which marks derived ratings), with growing offsets."""
    slots: dict[str, object] = {}
    out = []
    for event in events:
        record, errors = from_json_event(event)
        assert not errors, errors
        key = record["interaction_id"] or record["event_id"]
        offset = next(_OFFSETS)
        slots[key], sigs, _ = process_event(slots.get(key), record, (0, offset), 0, JoinConfig())
        out += [(offset, s) for s in sigs if s["group"] == group]
    return out


def judged(n: int, value: int, user: str = "alice") -> list[dict]:
    events = []
    for i in range(n):
        events.append(interaction(f"i{i}", user=user))
        events.append(
            feedback(f"judge:i{i}", "rating", f"i{i}", user=user, value=value, metadata=JUDGED)
        )
    return events


def test_derived_ratings_are_counted_apart_from_peoples() -> None:
    events = [*judged(3, 1), feedback("r1", "rating", "i0", value=-1)]
    state, _ = apply_signals(None, signals(events, "team:search"), 0, POLICY.team)
    stats = stats_view(state)
    assert (stats["thumbs_up"], stats["thumbs_down"]) == (0, 1)
    assert stats["derived_ratings"] == {"up": 3, "down": 0}
    assert stats["downvote_rate"] == 1.0  # people's rate only
    assert sum(w["up"] for w in stats["windows"]) == 0
    assert stats["counts"]["rating"] == 4


def test_a_few_derived_ratings_never_trigger_where_peoples_would() -> None:
    policy = ScopePolicy()  # user scope: one user is enough
    people = [
        e for i in range(5) for e in (interaction(f"p{i}"), feedback(f"r{i}", "rating", f"p{i}"))
    ]
    _, fired = apply_signals(None, signals(people, "user:alice"), 0, policy)
    assert [t["reason"] for t in fired] == ["ratings"]
    _, fired = apply_signals(None, signals(judged(5, -1), "user:alice"), 0, policy)
    assert fired == []
    # believed only in aggregate, at 0.3 each: 17 x 0.3 >= 5
    _, fired = apply_signals(None, signals(judged(16, -1), "user:alice"), 0, policy)
    assert fired == []
    _, fired = apply_signals(None, signals(judged(17, -1), "user:alice"), 0, policy)
    assert [t["reason"] for t in fired] == ["ratings"]


def test_weights() -> None:
    person = evidence("rating", "a", {"value": 1})
    machine = evidence("rating", "a", {"value": 1, **JUDGED})
    copy = evidence("engagement", "a", {"kind": "copy", "value": 1})
    assert (weight(person), weight(machine), weight(copy)) == (
        1.0,
        IMPLICIT_WEIGHT,
        IMPLICIT_WEIGHT,
    )
    few = [machine] * (MIN_IMPLICIT_SIGNALS - 1)
    assert believed_weight(few) == (0.0, set())
    enough = [machine] * MIN_IMPLICIT_SIGNALS + [person]
    total, users = believed_weight(enough)
    assert abs(total - (1.0 + MIN_IMPLICIT_SIGNALS * IMPLICIT_WEIGHT)) < 1e-9 and users == {"a"}


def test_offline_synthesis_weighs_judge_ratings_like_engagement() -> None:
    def verdicts(n: int, value: int) -> list[dict]:
        return [evidence("rating", f"m{i}", {"value": value, **JUDGED}) for i in range(n)]

    two = synthesizer().synthesize(trigger("user:alice", verdicts(2, 1)), [], T0)
    assert two["items"] == []
    assert {s["reason"] for s in two["skipped"]} == {"engagement_not_aggregated"}
    three = synthesizer().synthesize(trigger("user:alice", verdicts(3, 1)), [], T0)
    [example] = three["items"]
    assert abs(example["strength"] - 3 * IMPLICIT_WEIGHT) < 1e-9
    assert example["provenance"]["derived_by"] == "llm_judge"
    # three machine verdicts against (0.9) do not outweigh one person's thumbs-up (1.0)
    person = [evidence("rating", "alice", {"value": 1})]
    mixed = synthesizer().synthesize(trigger("user:alice", person + verdicts(3, -1)), [], T0)
    [example] = mixed["items"]
    assert example["kind"] == "preferred_example"
    assert example["provenance"]["derived_by"] == "rating"
    four = synthesizer().synthesize(trigger("user:alice", person + verdicts(4, -1)), [], T0)
    assert [i["kind"] for i in four["items"]] == ["avoided_example"]
