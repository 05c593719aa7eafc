"""Join processor: dedupe, waiting feedback, expiry, group attribution."""

from __future__ import annotations

from processors.groups import DerivedGroupRule
from processors.join import JoinConfig, expire, process_event
from schemas import from_json_event
from tests.factories import feedback, interaction

CONFIG = JoinConfig(wait_ms=1_000, retention_ms=10_000)


def rec(event: dict):
    record, errors = from_json_event(event)
    assert not errors, errors
    return record


def test_feedback_after_interaction_is_joined_and_attributed() -> None:
    slot, signals, dead = process_event(None, rec(interaction("i1")), (0, 10), 0, CONFIG)
    assert [s["group"] for s in signals] == ["user:alice", "team:search", "org:acme", "global"]
    slot, signals, dead = process_event(
        slot, rec(feedback("r1", "rating", "i1")), (0, 11), 1, CONFIG
    )
    assert dead == []
    assert all(s["joined"] and s["query"] == "how do I call the billing API?" for s in signals)
    assert [s["origin"] for s in signals] == [[0, 11, i] for i in range(4)]


def test_resent_event_id_has_no_effect() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, CONFIG)
    slot, first, _ = process_event(slot, rec(feedback("r1", "rating", "i1")), (0, 2), 0, CONFIG)
    slot, again, _ = process_event(slot, rec(feedback("r1", "rating", "i1")), (0, 3), 0, CONFIG)
    assert len(first) == 4
    assert again == []


def test_feedback_before_interaction_waits_then_joins() -> None:
    slot, signals, _ = process_event(
        None, rec(feedback("x1", "explanation", "i1")), (1, 5), 0, CONFIG
    )
    assert signals == []
    assert len(slot["pending"]) == 1
    slot, signals, _ = process_event(slot, rec(interaction("i1")), (1, 6), 500, CONFIG)
    kinds = [(s["type"], s["joined"]) for s in signals]
    assert kinds.count(("explanation", True)) == 4
    assert slot["pending"] == []


def test_orphan_feedback_is_processed_or_dead_lettered_never_dropped() -> None:
    slot, _, _ = process_event(None, rec(feedback("x1", "explanation", "i9")), (0, 1), 0, CONFIG)
    kept, signals, dead = expire(slot, 999, CONFIG)
    assert kept is not None and signals == [] and dead == []
    kept, signals, dead = expire(slot, 1_000, CONFIG)
    assert len(signals) == 4 and not signals[0]["joined"]
    slot, _, _ = process_event(None, rec(feedback("x2", "explanation", "i9")), (0, 1), 0, CONFIG)
    strict = JoinConfig(wait_ms=1_000, orphan_feedback="dead_letter")
    _, signals, dead = expire(slot, 5_000, strict)
    assert signals == []
    assert [d["reason"] for d in dead] == ["interaction_missing"]


def test_slot_expires_after_retention() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, CONFIG)
    assert expire(slot, 9_999, CONFIG)[0] is not None
    assert expire(slot, 10_000, CONFIG)[0] is None


def test_bounded_buffers() -> None:
    config = JoinConfig(max_seen=3, max_pending=2)
    slot = None
    dead_total = []
    for n in range(5):
        slot, _, dead = process_event(
            slot, rec(feedback(f"r{n}", "rating", "i1")), (0, n), 0, config
        )
        dead_total += dead
    assert slot is not None
    assert len(slot["pending"]) == 2
    assert [d["reason"] for d in dead_total] == ["pending_overflow"] * 3
    assert len(slot["seen"]) <= 3


def test_derived_groups_from_metadata() -> None:
    rules = (
        DerivedGroupRule(
            name="billing", key="path", op="glob", value="services/billing/**", group="path:billing"
        ),
        DerivedGroupRule(name="persona", key="persona", op="exists", group="persona:{value}"),
    )
    event = rec(
        interaction("i1", metadata={"path": "services/billing/api/v2.py", "persona": "analyst"})
    )
    _, signals, _ = process_event(None, event, (0, 1), 0, JoinConfig(rules=rules))
    assert {s["group"] for s in signals} >= {"path:billing", "persona:analyst"}


def test_tool_trajectory_flags_reach_the_signal() -> None:
    calls = [
        {"name": "search", "arguments": '{"q": 1}', "status": "error"},
        {"name": "search", "arguments": '{"q": 1}', "status": "timeout"},
        {"name": "search", "arguments": "{not json", "status": "ok"},
    ]
    _, signals, _ = process_event(None, rec(interaction("i1", tool_calls=calls)), (0, 1), 0, CONFIG)
    assert set(signals[0]["flags"]) == {"repeated_tool_failure", "retry_loop", "nonsense_arguments"}
