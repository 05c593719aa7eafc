"""Which interactions the judge is asked about: decided in the join slot, pure."""

from __future__ import annotations

from processors.join import JoinConfig, expire_judging, expired, judging_due, process_event
from processors.judging import JudgeConfig, deferred, sampled
from schemas import from_json_event
from tests.factories import feedback, interaction

JUDGE = JoinConfig(wait_ms=1_000, retention_ms=100_000, judge=JudgeConfig(1.0, after_ms=5_000))


def rec(event: dict):
    record, errors = from_json_event(event)
    assert not errors, errors
    return record


def test_unrated_sampled_interaction_is_judged_once_when_its_window_closes() -> None:
    slot, _, _ = process_event(
        None, rec(interaction("i1", metadata={"persona": "analyst"})), (0, 1), 1_000, JUDGE
    )
    assert judging_due(slot, 5_999) is False
    slot, requests = expire_judging(slot, 5_999)
    assert requests == []
    assert judging_due(slot, 6_000) is True
    slot, requests = expire_judging(slot, 6_000)
    assert len(requests) == 1
    request = requests[0]
    assert request["request_id"] == "judge:i1"
    assert request["interaction_id"] == "i1"
    assert (request["user_id"], request["team_id"], request["org_id"]) == (
        "alice",
        "search",
        "acme",
    )
    assert request["metadata"] == {"persona": "analyst"}
    assert request["response"] == "use the v1 client"
    assert (request["attempt"], request["not_before_ms"]) == (0, 0)
    assert expire_judging(slot, 60_000)[1] == []  # asked once


def test_explicit_feedback_cancels_the_judgement() -> None:
    for kind in ("rating", "explanation", "edit"):
        slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, JUDGE)
        slot, _, _ = process_event(slot, rec(feedback("f1", kind, "i1")), (0, 2), 10, JUDGE)
        assert expire_judging(slot, 10_000)[1] == [], kind


def test_a_resent_interaction_after_a_rating_does_not_ask_again() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, JUDGE)
    slot, _, _ = process_event(slot, rec(feedback("r1", "rating", "i1")), (0, 2), 10, JUDGE)
    again = interaction("i1-again", interaction_id="i1")
    slot, _, _ = process_event(slot, rec(again), (0, 3), 20, JUDGE)
    assert expire_judging(slot, 100_000)[1] == []


def test_early_explicit_feedback_waiting_for_the_interaction_counts() -> None:
    slot, _, _ = process_event(None, rec(feedback("r1", "rating", "i1")), (0, 1), 0, JUDGE)
    slot, _, _ = process_event(slot, rec(interaction("i1")), (0, 2), 10, JUDGE)
    assert expire_judging(slot, 10_000)[1] == []


def test_engagement_and_derived_ratings_do_not_cancel_it() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, JUDGE)
    slot, _, _ = process_event(slot, rec(feedback("g1", "engagement", "i1")), (0, 2), 1, JUDGE)
    derived = feedback("judge:i0", "rating", "i1", metadata={"derived_by": "llm_judge"})
    slot, signals, _ = process_event(slot, rec(derived), (0, 3), 2, JUDGE)
    assert signals and all(s["payload"]["derived_by"] == "llm_judge" for s in signals)
    assert len(expire_judging(slot, 10_000)[1]) == 1


def test_off_by_default_and_sampling_is_stable() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, JoinConfig())
    assert slot.get("judge") is None
    assert expire_judging(slot, 10**12)[1] == []
    picked = [f"i{n}" for n in range(2_000) if sampled(f"i{n}", 0.25)]
    assert picked == [f"i{n}" for n in range(2_000) if sampled(f"i{n}", 0.25)]
    assert 400 < len(picked) < 600
    half = JoinConfig(judge=JudgeConfig(0.25, after_ms=0))
    for n in range(200):
        slot, _, _ = process_event(None, rec(interaction(f"i{n}")), (0, n), 0, half)
        assert (slot.get("judge") is not None) == sampled(f"i{n}", 0.25)


def test_a_slot_with_a_candidate_is_judged_once_then_dropped() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, JUDGE)
    slot, requests = expire_judging(slot, 100_000)
    assert len(requests) == 1
    assert expired(slot, 100_000, JUDGE)


def test_deferred_request_backs_off_and_keeps_everything_else() -> None:
    slot, _, _ = process_event(None, rec(interaction("i1")), (0, 1), 0, JUDGE)
    _, (request,) = expire_judging(slot, 10_000)
    again = deferred(request, 20_000, None, 300.0)
    assert (again["attempt"], again["not_before_ms"]) == (1, 22_000)
    third = deferred(again, 30_000, None, 300.0)
    assert (third["attempt"], third["not_before_ms"]) == (2, 34_000)
    hinted = deferred(third, 40_000, 7.5, 300.0)
    assert hinted["not_before_ms"] == 47_500
    capped = deferred({**hinted, "attempt": 20}, 0, None, 300.0)
    assert capped["not_before_ms"] == 300_000
    assert {k: v for k, v in capped.items() if k not in ("attempt", "not_before_ms")} == {
        k: v for k, v in request.items() if k not in ("attempt", "not_before_ms")
    }
