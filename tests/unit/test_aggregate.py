"""Aggregation: exact counts, replay dedupe, bounded state, trigger policies."""

from __future__ import annotations

import itertools

import orjson

from processors.aggregate import AggregateLimits, apply_signals, stats_view, weighted_support
from processors.join import process_event
from processors.policy import LearningPolicy
from schemas import from_json_event
from tests.factories import feedback, interaction

POLICY = LearningPolicy()
_NEXT_OFFSET = itertools.count()


def signals_for(events, group: str, partition: int = 0):
    """Signals as the join stage emits them; input offsets only grow, as on a partition."""
    slot = None
    out = []
    for event in events:
        record, errors = from_json_event(event)
        assert not errors
        offset = next(_NEXT_OFFSET)
        slot, signals, _ = process_event(slot, record, (partition, offset), 0, _config())
        out.extend(s for s in signals if s["group"] == group)
    return out


def _config():
    from processors.join import JoinConfig

    return JoinConfig()


def test_counts_and_replays_are_exact() -> None:
    events = [
        interaction("i1"),
        feedback("r1", "rating", "i1"),
        feedback("r2", "rating", "i1", value=1),
    ]
    sigs = signals_for(events, "team:search")
    state, _ = apply_signals(None, list(enumerate(sigs)), 0, POLICY.team)
    # the same signals again at the same offsets (the aggregator's own replay)
    state, _ = apply_signals(state, list(enumerate(sigs)), 0, POLICY.team)
    # the same signals again at new offsets (the join stage replayed)
    state, _ = apply_signals(state, [(10 + i, s) for i, s in enumerate(sigs)], 0, POLICY.team)
    stats = stats_view(state)
    assert stats["counts"] == {"interaction": 1, "rating": 2}
    assert (stats["thumbs_up"], stats["thumbs_down"]) == (1, 1)


def _explanations(users: list[str], start: int = 0):
    events = [interaction("i1")]
    events += [feedback(f"x{start + n}", "explanation", "i1", user=u) for n, u in enumerate(users)]
    return signals_for(events, "team:search")


def test_team_rule_needs_three_distinct_users() -> None:
    state, triggers = apply_signals(
        None, list(enumerate(_explanations(["a", "b"]))), 0, POLICY.team
    )
    assert triggers == []
    more = [s for s in _explanations(["c"], start=10) if s["type"] == "explanation"]
    state, triggers = apply_signals(state, [(100, more[0])], 0, POLICY.team)
    assert more[0]["type"] == "explanation"
    assert [t["reason"] for t in triggers] == ["evidence"]
    assert {e["user_id"] for e in triggers[0]["evidence"] if e["type"] == "explanation"} == {
        "a",
        "b",
        "c",
    }


def test_one_loud_user_cannot_trigger_a_team_rule() -> None:
    loud = _explanations(["loud"] * 50)
    state, triggers = apply_signals(None, list(enumerate(loud)), 0, POLICY.team)
    assert triggers == []
    assert weighted_support(state["evidence"], POLICY.team) == (2.0, 1)


def test_user_group_learns_from_one_explanation() -> None:
    events = [interaction("i1"), feedback("x1", "explanation", "i1")]
    sigs = signals_for(events, "user:alice")
    _, triggers = apply_signals(None, list(enumerate(sigs)), 0, POLICY.user)
    assert len(triggers) == 1 and not triggers[0]["requires_approval"]


def test_no_retrigger_while_in_flight_then_after_timeout() -> None:
    limits = AggregateLimits(in_flight_timeout_ms=1_000)
    sigs = signals_for([interaction("i1"), feedback("x1", "explanation", "i1")], "user:alice")
    state, first = apply_signals(None, [(0, sigs[0]), (1, sigs[1])], 0, POLICY.user, limits)
    more = signals_for([interaction("i1"), feedback("x2", "explanation", "i1")], "user:alice")
    state, second = apply_signals(state, [(2, more[1])], 500, POLICY.user, limits)
    assert len(first) == 1 and second == []
    state, third = apply_signals(state, [], 1_500, POLICY.user, limits)
    assert len(third) == 1


def test_tool_failure_rate_triggers() -> None:
    calls = [{"name": "deploy", "arguments": '{"x": 1}', "status": "error"}] * 2
    events = []
    for n, user in enumerate(["a", "b", "c"]):
        events.append(interaction(f"i{n}", user=user, tool_calls=calls))
    sigs = []
    for event in events:
        sigs += signals_for([event], "team:search")
    _, triggers = apply_signals(None, list(enumerate(sigs)), 0, POLICY.team)
    assert [t["reason"] for t in triggers] == ["tool_failure_rate:deploy"]


def test_state_stays_bounded() -> None:
    limits = AggregateLimits(max_recent_ids=16, max_evidence=8, max_tools=4, max_contributors=10)
    state = None
    for n in range(300):
        events = [
            interaction(
                f"i{n}",
                user=f"u{n}",
                tool_calls=[{"name": f"tool{n}", "arguments": "", "status": "ok"}],
            ),
            feedback(f"x{n}", "explanation", f"i{n}", user=f"u{n}"),
        ]
        sigs = signals_for(events, "team:search", partition=n % 3)
        state, _ = apply_signals(
            state, [(2 * n, sigs[0]), (2 * n + 1, sigs[1])], 0, POLICY.team, limits
        )
    assert state is not None
    assert len(state["evidence"]) <= 8 and len(state["tools"]) <= 4
    assert len(state["contributors"]) <= 10 and len(state["recent_ids"]) <= 16
    assert len(state["applied"]) <= 3
    # past the exact map's cap the count is a HyperLogLog estimate (~6.5% error)
    assert 255 <= state["distinct_contributors"] <= 345


def test_distinct_contributors_exact_below_the_cap() -> None:
    state = None
    for n in range(40):
        sigs = signals_for([interaction(f"i{n}", user=f"u{n % 7}")], "team:search")
        state, _ = apply_signals(state, [(n, sigs[0])], 0, POLICY.team)
    assert state is not None and state["distinct_contributors"] == 7


def _synthesis_done(trigger, deferred: list[str]):
    return {
        "signal_id": f"_synthesis_done|{trigger['trigger_id']}",
        "group": trigger["group"],
        "origin": None,
        "event_id": trigger["trigger_id"],
        "type": "_synthesis_done",
        "timestamp": 1,
        "user_id": "",
        "org_id": None,
        "interaction_id": None,
        "joined": False,
        "query": None,
        "response": None,
        "payload": {
            "trigger_id": trigger["trigger_id"],
            "version": 1,
            "evidence_ids": [e["event_id"] for e in trigger["evidence"]],
            "deferred_ids": deferred,
        },
        "flags": [],
    }


def test_evidence_below_policy_waits_for_fresh_evidence_then_counts_again() -> None:
    """A team trigger whose clusters were too small keeps that evidence (deferred) instead of
    dropping it; only new evidence fires the next trigger, which then carries both."""
    state, triggers = apply_signals(
        None, list(enumerate(_explanations(["a", "b", "c"], start=200))), 0, POLICY.team
    )
    assert [t["reason"] for t in triggers] == ["evidence"]
    explained = [e["event_id"] for e in triggers[0]["evidence"] if e["type"] == "explanation"]
    done = _synthesis_done(triggers[0], deferred=explained[:2])
    state, again = apply_signals(state, [(1000, done)], 0, POLICY.team)
    assert again == []  # the deferred evidence alone never re-fires (no loop)
    assert state["deferred"] == explained[:2]
    assert sorted(e["event_id"] for e in state["evidence"]) == sorted(explained[:2])
    fresh = [s for s in _explanations(["d"], start=300) if s["type"] == "explanation"]
    state, later = apply_signals(state, [(1001, fresh[0])], 0, POLICY.team)
    assert [t["reason"] for t in later] == ["evidence"]
    carried = {e["event_id"] for e in later[0]["evidence"]}
    assert set(explained[:2]) | {fresh[0]["event_id"]} <= carried


def test_deferred_tool_failures_do_not_refire_until_a_fresh_failure() -> None:
    calls = [{"name": "deploy", "arguments": '{"x": 1}', "status": "error"}] * 2
    sigs = []
    for n, user in enumerate(["a", "b", "c"]):
        sigs += signals_for([interaction(f"ti{n}", user=user, tool_calls=calls)], "team:search")
    state, triggers = apply_signals(None, list(enumerate(sigs, start=2000)), 0, POLICY.team)
    [trigger] = triggers
    done = _synthesis_done(trigger, deferred=[e["event_id"] for e in trigger["evidence"]])
    state, again = apply_signals(state, [(3000, done)], 0, POLICY.team)
    assert again == []
    more = signals_for([interaction("ti9", user="d", tool_calls=calls)], "team:search")
    state, later = apply_signals(state, [(3001, more[0])], 0, POLICY.team)
    assert [t["reason"] for t in later] == ["tool_failure_rate:deploy"]


def test_a_tool_crossing_its_failure_line_triggers_once_each_way() -> None:
    """Failures before the call minimum, already used by an earlier synthesis, then a
    successful call that brings the count to the minimum: the tool is over the line and
    the group triggers (nothing fresh failed). Successes later bring it back under the
    line: one more trigger, so its tool rule can be retired; then nothing."""
    fail = {"name": "deploy", "arguments": '{"x": 1}', "status": "error"}
    ok = {**fail, "status": "ok"}
    group = "user:alice"
    offsets = itertools.count(5000)

    def apply(state, events):
        sigs = signals_for(events, group)
        return apply_signals(state, [(next(offsets), s) for s in sigs], 0, POLICY.user)

    state, [first] = apply(
        None,
        [
            interaction("ci0", tool_calls=[fail, fail]),
            interaction("ci1", tool_calls=[fail, fail]),
            feedback("cx0", "explanation", "ci1", text="Always say which region you deploy to."),
        ],
    )
    assert first["reason"] == "evidence"  # 4 calls: under the 5-call minimum
    done = _synthesis_done(first, deferred=[e["event_id"] for e in first["evidence"]])
    state, _ = apply_signals(state, [(next(offsets), done)], 0, POLICY.user)
    state, [crossed] = apply(state, [interaction("ci2", tool_calls=[ok])])  # 4 of 5 failed
    assert crossed["reason"] == "tool_failure_rate:deploy"
    state, _ = apply_signals(state, [(next(offsets), _synthesis_done(crossed, []))], 0, POLICY.user)
    state, none = apply(state, [interaction(f"cj{n}", tool_calls=[ok]) for n in range(3)])
    assert none == []  # 4 of 8 failed: still at the line
    state, [back] = apply(state, [interaction("cj3", tool_calls=[ok])])  # 4 of 9
    assert back["reason"] == "tool_recovered:deploy"
    state, _ = apply_signals(state, [(next(offsets), _synthesis_done(back, []))], 0, POLICY.user)
    state, after = apply(state, [interaction(f"ck{n}", tool_calls=[ok]) for n in range(3)])
    assert after == []
    assert state["tools_flagged"] == []


def test_deferred_ratings_do_not_refire_until_a_fresh_rating() -> None:
    """Ratings an example could not use yet (too few users agree in a team) stay, and
    wait for a fresh rating instead of triggering the group again and again."""
    sigs = []
    for n, user in enumerate(["a", "b", "c", "a", "b", "c"]):
        sigs += signals_for(
            [interaction(f"ri{n}", user=user), feedback(f"rr{n}", "rating", f"ri{n}", user=user)],
            "team:search",
        )
    state, triggers = apply_signals(None, list(enumerate(sigs, start=4000)), 0, POLICY.team)
    assert [t["reason"] for t in triggers] == ["ratings"]
    rated = [e["event_id"] for e in triggers[0]["evidence"] if e["type"] == "rating"]
    done = _synthesis_done(triggers[0], deferred=rated)
    state, again = apply_signals(state, [(5000, done)], 0, POLICY.team)
    assert again == []  # no loop on the same ratings
    assert sorted(state["deferred"]) == sorted(rated)
    more = signals_for(
        [interaction("ri9", user="d"), feedback("rr9", "rating", "ri9", user="d")], "team:search"
    )
    state, later = apply_signals(state, [(5001, more[0]), (5002, more[1])], 0, POLICY.team)
    assert [t["reason"] for t in later] == ["ratings"]
    assert set(rated) <= {e["event_id"] for e in later[0]["evidence"]}


def test_ratings_against_a_live_rule_resynthesise_below_the_ratings_weight() -> None:
    """Two down-votes of answers using the value a live rule chose ("euros") re-synthesise
    the user's group at once, though two ratings are far below the generic ratings weight:
    votes against the rule that steers the answers are how an unspoken change shows."""
    from processors.consolidate import live_choices
    from processors.memory import MemoryItem

    group = "user:gaia"

    def rated(n: int, response: str, value: int):
        events = [
            interaction(f"gi{n}", user="gaia", query="hotel price?", response=response),
            feedback(f"gr{n}", "rating", f"gi{n}", user="gaia", value=value),
        ]
        return signals_for(events, group)

    euro_rule: MemoryItem = {  # type: ignore[typeddict-item]
        "item_id": "r1",
        "group": group,
        "kind": "rule",
        "status": "active",
        "text": "Quote prices in euros.",
        "provenance": {"derived_by": "explanation_cluster"},
    }
    choices = live_choices([euro_rule])
    assert choices and choices[0]["kind"] == "currency" and choices[0]["chosen"] == ["euro"]
    state, _ = apply_signals(None, list(enumerate(rated(0, "Hi.", 1), start=7000)), 0, POLICY.user)
    done = {
        "signal_id": "done-g",
        "event_id": "done-g",
        "type": "_synthesis_done",
        "group": group,
        "user_id": None,
        "timestamp": 1,
        "origin": None,
        "payload": {"trigger_id": state["in_flight"], "version": 1, "live_choices": choices},
        "flags": [],
    }
    state, _ = apply_signals(state, [(7100, done)], 0, POLICY.user)
    # one vote against is not enough; an unrelated down-vote does not count
    state, none = apply_signals(
        state,
        list(
            enumerate(
                rated(1, "The hotel is 140 euros per night.", -1) + rated(2, "No.", -1), start=7200
            )
        ),
        0,
        POLICY.user,
    )
    assert none == []
    state, fired = apply_signals(
        state, list(enumerate(rated(3, "The tour is 90 euros.", -1), start=7300)), 0, POLICY.user
    )
    assert [t["reason"] for t in fired] == ["rated_against_rule"]


def test_an_explanation_naming_another_value_of_a_live_choice_triggers_at_once() -> None:
    """One member asking for Spanish where the team's live rule says French fires a team
    synthesis although one user is below the team's policy: the rule's supporters may be
    withdrawing their support."""
    sigs = _explanations(["a", "b", "c"], start=500)
    state, triggers = apply_signals(None, list(enumerate(sigs, start=8000)), 0, POLICY.team)
    done = _synthesis_done(triggers[0], deferred=[])
    done["payload"]["live_choices"] = [
        {"kind": "language", "chosen": ["french"], "values": ["french", "spanish", "english"]}
    ]
    state, again = apply_signals(state, [(8100, done)], 0, POLICY.team)
    assert again == []
    same = signals_for(
        [interaction("ls1"), feedback("ls2", "explanation", "ls1", user="a", text="French!")],
        "team:search",
    )
    state, none = apply_signals(state, list(enumerate(same, start=8200)), 0, POLICY.team)
    assert none == []
    other = signals_for(
        [interaction("ls3"), feedback("ls4", "explanation", "ls3", user="a", text="Spanish now")],
        "team:search",
    )
    state, fired = apply_signals(state, list(enumerate(other, start=8300)), 0, POLICY.team)
    assert [t["reason"] for t in fired] == ["explained_against_rule"]


def _every_kind(prefix: str, users: list[str]):
    """Signals of every kind folding touches, for ``team:search``: tools, ratings with
    scores and from the judge, engagement, explanations, edits, new hours."""
    events = []
    for n, user in enumerate(users):
        iid = f"{prefix}i{n}"
        calls = [{"name": f"tool{n % 3}", "arguments": "", "status": ("ok", "error")[n % 2]}]
        events.append(
            interaction(
                iid, user=user, tool_calls=calls, timestamp=f"2026-11-25T{8 + n:02d}:00:00Z"
            )
        )
        events.append(feedback(f"{prefix}r{n}", "rating", iid, user=user, value=(1, -1)[n % 2]))
        events.append(feedback(f"{prefix}s{n}", "rating", iid, user=user, score=n % 5, scale=5))
        events.append(
            feedback(f"{prefix}d{n}", "rating", iid, user=user, metadata={"derived_by": "judge"})
        )
        events.append(feedback(f"{prefix}g{n}", "engagement", iid, user=user, value=1.5))
        events.append(feedback(f"{prefix}x{n}", "explanation", iid, user=user))
        events.append(feedback(f"{prefix}e{n}", "edit", iid, user=user))
    return signals_for(events, "team:search")


def test_folding_into_a_copy_leaves_the_original_as_it_was() -> None:
    """``copy_state`` must copy everything folding changes in place (the aggregate agent
    folds a batch into a copy so a failed batch leaves the table untouched)."""
    import orjson

    from processors.aggregate import copy_state

    limits = AggregateLimits(
        max_recent_ids=5,
        max_tools=2,
        max_contributors=3,
        max_evidence=4,
        max_rated=3,
        window_hours=2,
    )
    first = _every_kind("a", ["u1", "u2", "u3", "u4"])
    state, triggers = apply_signals(None, list(enumerate(first)), 0, POLICY.team, limits)
    assert state["contributors_sketch"] and state["engagement"] and state["tools"]
    before = orjson.dumps(state)
    later = _every_kind("b", ["u1", "u5", "u6"])
    done = _synthesis_done(triggers[0], deferred=[]) if triggers else None
    forget = {
        **(done or later[0]),
        "signal_id": "forget|u1",
        "type": "_forget_user",
        "payload": {"user_id": "u1"},
        "origin": None,
    }
    batch = [*later, *([done] if done else []), forget]
    positions = list(enumerate(batch, start=1000))
    copied, _ = apply_signals(copy_state(state), positions, 5, POLICY.team, limits)
    assert orjson.dumps(state) == before  # the original is untouched
    # and the copy folds exactly as a full (JSON) copy would
    full, _ = apply_signals(orjson.loads(before), positions, 5, POLICY.team, limits)
    assert orjson.dumps(copied) == orjson.dumps(full)


def test_long_texts_keep_a_groups_state_under_kafkas_message_limit() -> None:
    """Every buffer full of the longest texts an event may carry (1 MB events): the
    group's changelog record and its triggers stay under Kafka's default 1 MB message
    limit; past it the record is refused and the group's whole signals partition stops
    learning. Each kept text is cut (and marked) instead."""
    long = 60_000
    user = "{:036d}".format  # uuid-sized user ids
    events = []
    for n in range(100):
        calls = [{"name": "run", "arguments": "a" * 12_000, "status": "error"} for _ in range(64)]
        events += [
            interaction(f"i{n}", user=user(n % 9), query="q" * long, response="r" * long,
                        tool_calls=calls),
            feedback(f"x{n}", "explanation", f"i{n}", user=user(n % 9), text="t" * long),
            feedback(f"e{n}", "edit", f"i{n}", user=user(n % 9), original="o" * long,
                     edited="e" * long),
            feedback(f"r{n}", "rating", f"i{n}", user=user(n % 9), value=1),
        ]
    sigs = signals_for(events, "team:search")
    state, largest_trigger = None, 0
    for start in range(0, len(sigs), 40):
        batch = [(start + i, s) for i, s in enumerate(sigs[start : start + 40])]
        state, triggers = apply_signals(state, batch, 0, POLICY.team)
        largest_trigger = max([largest_trigger, *(len(orjson.dumps(t)) for t in triggers)])
    assert state is not None
    assert len(state["evidence"]) == AggregateLimits().max_evidence  # the buffers are full
    assert len(state["rated"]) == AggregateLimits().max_rated
    assert len(orjson.dumps(state)) < 1_000_000
    assert 0 < largest_trigger < 1_000_000
    kept = state["rated"][-1]
    assert kept["response"].endswith("…") and len(kept["response"].encode()) <= 1024


def test_long_ids_keep_a_wide_groups_state_under_kafkas_message_limit() -> None:
    """Ids at the 256-character limit in a group of 3,000 users with full buffers and
    512 control signals: contributors and recent signal ids are kept as digests, so the
    changelog record stays under 1 MB; the count of users and forgetting still work."""
    from processors.aggregate import compact_id

    long = 60_000
    user = "u{:0255d}".format  # 256 characters
    events = []
    for n in range(3_000):
        iid = f"i{n:0255d}"
        events.append(interaction(iid, user=user(n), query="q" * long, response="r" * long))
        events.append(feedback(f"x{n:0255d}", "explanation", iid, user=user(n), text="t" * long))
        events.append(feedback(f"r{n:0255d}", "rating", iid, user=user(n), value=1))
    sigs = signals_for(events, "team:search")
    controls = [
        {**sigs[0], "signal_id": f"_synthesis_done|team:search#{n:0250d}", "origin": None,
         "type": "_synthesis_done", "user_id": "", "payload": {"trigger_id": None}}
        for n in range(600)
    ]
    state = None
    batches = [*sigs, *controls]
    for start in range(0, len(batches), 500):
        batch = [(start + i, s) for i, s in enumerate(batches[start : start + 500])]
        state, _ = apply_signals(state, batch, 0, POLICY.team)
    assert state is not None
    limits = AggregateLimits()
    assert len(state["contributors"]) == limits.max_contributors
    assert len(state["recent_ids"]) == limits.max_recent_ids
    assert len(state["evidence"]) == limits.max_evidence
    assert len(orjson.dumps(state)) < 1_000_000, len(orjson.dumps(state))
    assert 2_700 <= state["distinct_contributors"] <= 3_300  # estimated past the map
    # a replayed control signal is still recognised by its digest
    again, _ = apply_signals(state, [(10**9, controls[-1])], 0, POLICY.team)
    assert again["recent_ids"].count(compact_id(controls[-1]["signal_id"])) == 1
    # forgetting a long-id user takes them out of the count
    before = again["distinct_contributors"]
    forget = {**controls[0], "signal_id": "forget|x", "type": "_forget_user",
              "payload": {"user_id": user(0)}}
    forgot, _ = apply_signals(again, [(10**9 + 1, forget)], 0, POLICY.team)
    assert compact_id(user(0)) not in forgot["contributors"]
    assert forgot["distinct_contributors"] == before - 1


def test_short_ids_are_kept_as_they_are_and_long_ones_as_a_digest() -> None:
    from processors.aggregate import COMPACT_ID_CHARS, compact_id

    uuid_like = "0b6f7e8a-3c1d-4f2e-9a5b-6c7d8e9f0a1b"
    assert compact_id(uuid_like) == uuid_like
    assert compact_id("x" * COMPACT_ID_CHARS) == "x" * COMPACT_ID_CHARS
    long_a, long_b = "a" * 200, "a" * 199 + "b"
    assert compact_id(long_a) == compact_id(long_a) != compact_id(long_b)
    assert compact_id(long_a).startswith("~") and len(compact_id(long_a)) == 25
