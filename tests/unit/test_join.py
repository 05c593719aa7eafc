"""Join processor: dedupe, waiting feedback, expiry, group attribution."""

from __future__ import annotations

from processors.aggregate import AggregateLimits, apply_signals
from processors.groups import DerivedGroupRule
from processors.join import JoinConfig, expired, overdue, process_event, release
from processors.policy import ScopePolicy
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
    assert overdue(slot, 999, CONFIG) == []
    assert overdue(slot, 1_000, CONFIG) == ["x1"]
    kept, signals, dead = release(slot, ["x1"], (0, 7), 1_000, CONFIG)
    assert kept is not None and kept["pending"] == [] and dead == []
    assert len(signals) == 4 and not signals[0]["joined"]
    assert [s["origin"] for s in signals] == [[0, 7, i] for i in range(4)]  # the marker's
    slot, _, _ = process_event(None, rec(feedback("x2", "explanation", "i9")), (0, 1), 0, CONFIG)
    strict = JoinConfig(wait_ms=1_000, orphan_feedback="dead_letter")
    _, signals, dead = release(slot, overdue(slot, 5_000, strict), (0, 2), 5_000, strict)
    assert signals == []
    assert [d["reason"] for d in dead] == ["interaction_missing"]


def test_release_names_its_events_and_a_repeat_changes_nothing() -> None:
    slot, _, _ = process_event(None, rec(feedback("x1", "explanation", "i9")), (0, 1), 0, CONFIG)
    slot, _, _ = process_event(slot, rec(feedback("x2", "rating", "i9")), (0, 2), 900, CONFIG)
    assert overdue(slot, 1_000, CONFIG) == ["x1"]  # x2 has waited 100 ms only
    slot, signals, _ = release(slot, ["x1"], (0, 3), 1_000, CONFIG)
    assert {s["event_id"] for s in signals} == {"x1"}
    assert [p["event"]["event_id"] for p in slot["pending"]] == ["x2"]
    slot, again, dead = release(slot, ["x1"], (0, 4), 1_100, CONFIG)
    assert again == [] and dead == []
    # the interaction arrives: the still-waiting rating joins it, x1 is not sent again
    slot, signals, _ = process_event(slot, rec(interaction("i9")), (0, 5), 1_200, CONFIG)
    assert {s["event_id"] for s in signals} == {"i9", "x2"}


def test_marker_after_the_interaction_releases_nothing() -> None:
    slot, _, _ = process_event(None, rec(feedback("x1", "explanation", "i9")), (0, 1), 0, CONFIG)
    slot, _, _ = process_event(slot, rec(interaction("i9")), (0, 2), 2_000, CONFIG)
    slot, signals, dead = release(slot, ["x1"], (0, 3), 2_000, CONFIG)
    assert signals == [] and dead == []
    assert release(None, ["x1"], (0, 3), 2_000, CONFIG) == (None, [], [])


def test_replay_from_a_stale_slot_counts_each_feedback_once() -> None:
    """A worker sent the joined signals but died before writing the slot.

    Its successor recovers the slot as it was before the interaction (feedback
    still pending, long overdue), so its timer asks for a release right away, and
    the marker lands after everything the first worker read. Replaying the log in
    order joins the feedback to its interaction with the same origin as before,
    and the marker releases nothing: the aggregate counts it once, however many
    signals passed through the group in between (no ring of recent ids involved).
    """
    limits = AggregateLimits(max_recent_ids=4)
    policy = ScopePolicy()
    log = [rec(feedback("x1", "explanation", "i1")), rec(interaction("i1"))]
    log += [rec(interaction(f"n{i}")) for i in range(20)]  # traffic through org:acme
    first: list[tuple[int, dict]] = []
    slot = None
    slots = {}
    for offset, event in enumerate(log):
        key = event["interaction_id"]
        slot, signals, _ = process_event(slots.get(key), event, (0, offset), 0, CONFIG)
        slots[key] = slot
        if offset == 0:
            stale = {**slot, "pending": list(slot["pending"]), "seen": list(slot["seen"])}
        first.extend((len(first), s) for s in signals if s["group"] == "org:acme")
    state, _ = apply_signals(None, first, 0, policy, limits)
    assert state["counts"]["explanation"] == 1
    # the successor: the stale slot of i1, the log replayed from offset 1, then the marker
    slots = {"i1": stale}
    assert overdue(stale, 60_000, CONFIG) == ["x1"]
    replay: list[tuple[int, dict]] = []
    for offset, event in enumerate(log[1:], start=1):
        key = event["interaction_id"]
        slots[key], signals, _ = process_event(slots.get(key), event, (0, offset), 60_000, CONFIG)
        replay.extend(s for s in signals if s["group"] == "org:acme")
    slots["i1"], signals, _ = release(slots["i1"], ["x1"], (0, len(log)), 60_000, CONFIG)
    replay.extend(s for s in signals if s["group"] == "org:acme")
    state, _ = apply_signals(
        state, [(len(first) + i, s) for i, s in enumerate(replay)], 60_000, policy, limits
    )
    assert state["counts"]["explanation"] == 1
    assert state["counts"]["interaction"] == 21


def test_slot_expires_after_retention() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, CONFIG)
    assert not expired(slot, 9_999, CONFIG)
    assert expired(slot, 10_000, CONFIG)
    slot, _, _ = process_event(None, rec(feedback("x1", "rating", "i2")), (0, 2), 0, CONFIG)
    assert not expired(slot, 10**9, CONFIG)  # feedback waits for its release first


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


def test_an_interaction_signal_carries_its_query_and_response_once() -> None:
    """As the signal's own fields; its payload keeps the rest (tool calls, model)."""
    calls = [{"name": "search", "arguments": '{"q": "billing"}', "status": "ok"}]
    event = interaction("i1", response="use the v2 client", tool_calls=calls, model="m-1")
    _, signals, _ = process_event(None, rec(event), (0, 1), 0, CONFIG)
    for signal in signals:
        assert (signal["query"], signal["response"]) == (event["query"], "use the v2 client")
        assert "query" not in signal["payload"] and "response" not in signal["payload"]
        assert signal["payload"]["model"] == "m-1"
        assert [c["arguments"] for c in signal["payload"]["tool_calls"]] == ['{"q": "billing"}']


def test_long_texts_are_cut_in_the_slot_the_signals_and_waiting_feedback() -> None:
    """Slots live for the whole retention and 64 edits may wait in one: their texts are
    cut to ``max_text_bytes`` (and marked), the way aggregation keeps them."""
    config = JoinConfig(wait_ms=1_000, retention_ms=10_000, max_text_bytes=256)
    long = "é" * 5_000
    early = feedback("e1", "edit", "i1", original=long, edited=long + "!")
    slot, _, _ = process_event(None, rec(early), (0, 1), 0, config)
    waiting = slot["pending"][0]["event"]["edit"]
    assert len(waiting["original"].encode()) <= 256 and waiting["original"].endswith("…")
    calls = [{"name": "run", "arguments": "{" * 2_000, "status": "ok"}]
    event = interaction("i1", query="q" * 5_000, response=long, tool_calls=calls)
    slot, signals, _ = process_event(slot, rec(event), (0, 2), 0, config)
    assert len(slot["interaction"]["response"].encode()) <= 256
    assert len(slot["interaction"]["query"]) <= 256
    interaction_signal, edit_signal = signals[0], signals[-1]
    assert interaction_signal["flags"] == ["nonsense_arguments"]  # judged on the full text
    assert len(interaction_signal["payload"]["tool_calls"][0]["arguments"]) <= 256
    assert len(edit_signal["payload"]["edited"].encode()) <= 256
    assert edit_signal["response"] == slot["interaction"]["response"]
