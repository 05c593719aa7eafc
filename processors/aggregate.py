"""Per-group aggregation and threshold triggers.

:func:`apply_signals` folds a micro-batch of signals for one group into its
:class:`GroupState` and says whether the group should trigger synthesis. Every
part of the state is bounded (capped maps, fixed rings), so a table value never
grows with the number of messages. Replays are dropped: by the signal's offset
in its own topic, by the origin of the input that produced it, and by a small
ring of recent ids for the rest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from processors.clip import clip_optional, clip_strings
from processors.embedding import content_tokens
from processors.groups import scope_of
from processors.policy import ScopePolicy
from processors.ratings import (
    believed_weight,
    is_derived,
    is_implicit,
    polarity,
    rating_fraction,
)
from processors.signals import Signal
from processors.sketch import add as sketch_add
from processors.sketch import estimate, new_sketch

HOUR_MS = 3_600_000
EVIDENCE_TYPES = frozenset({"explanation", "edit"})
RATED_TYPES = frozenset({"rating", "engagement"})


class Trigger(TypedDict):
    """A synthesis request: the group, why, and the evidence bundle."""

    trigger_id: str
    group: str
    scope: str
    reason: str
    created_ms: int
    requires_approval: bool
    evidence: list[dict[str, Any]]
    stats: dict[str, Any]


class LiveChoice(TypedDict):
    """One exclusive choice a live rule makes: its kind, the values it picked, all values."""

    kind: str
    chosen: list[str]
    values: list[str]


# ratings against a live rule's choice it takes to re-synthesise at once: answers using the
# chosen value rated down, and answers using another value of the same kind rated up
MIN_RATED_AGAINST_RULE = 2


class GroupState(TypedDict):
    group: str
    scope: str
    org: str | None  # the tenant that owns a non-global group (first org seen)
    tenant_conflicts: int
    last_offset: int
    applied: dict[str, list[int]]
    recent_ids: list[str]
    counts: dict[str, int]
    up: int  # people's ratings only
    down: int
    derived_up: NotRequired[int]  # the LLM judge's ratings: counted apart, weighed down
    derived_down: NotRequired[int]
    score_sum: float
    score_n: int
    engagement: dict[str, list[float]]
    tools: dict[str, list[int]]
    # tools whose failure rate was over the policy when a trigger last said so: a tool
    # crossing the line either way triggers once (``tool_failure_rate`` / ``tool_recovered``)
    tools_flagged: NotRequired[list[str]]
    negatives: int
    contributors: dict[str, int]
    contributors_sketch: list[int]
    distinct_contributors: int
    evidence: list[dict[str, Any]]
    # evidence a synthesis left for later (a cluster below the scope's policy); it counts
    # again only together with fresh evidence, so a wide group accumulates support
    deferred: NotRequired[list[str]]
    # the exclusive choices the group's live rules make ("currency": chose "euro" of all
    # currencies), sent back by the memory stage after each synthesis
    live_choices: NotRequired[list[LiveChoice]]
    rated: list[dict[str, Any]]
    windows: list[list[int]]
    last_event_ms: int
    last_synthesis_ms: int | None
    memory_version: int
    in_flight: str | None
    in_flight_since: int
    triggers_fired: int


@dataclass(frozen=True, slots=True)
class AggregateLimits:
    """Bounds on every collection inside a group's state."""

    max_recent_ids: int = 512
    max_tools: int = 64
    max_contributors: int = 2048
    max_evidence: int = 64
    max_rated: int = 32
    window_hours: int = 24
    in_flight_timeout_ms: int = 600_000
    #: each text in an evidence entry (query, response, explanation, edit) is cut to
    #: this many UTF-8 bytes, so a state with every buffer full stays well under
    #: Kafka's 1 MB message limit (see processors.clip)
    max_text_bytes: int = 1024


COMPACT_ID_CHARS = 40
"""Ids a group state keeps by the thousand (contributors, recent signal ids) longer
than this are kept as a digest. Why: ids may be 256 characters; 2,048 contributors
and 512 recent signal ids at that length add ~800 KB to a wide group's changelog
record, past Kafka's 1 MB limit (then the record is refused and the group stops
learning). uuids and shorter ids are kept as they are, readable in the state."""


def compact_id(value: str) -> str:
    """``value`` if short, else ``~`` and a 24-hex-digit digest of it (96 bits)."""
    if len(value) <= COMPACT_ID_CHARS:
        return value
    return "~" + hashlib.blake2b(value.encode(), digest_size=12).hexdigest()


def new_state(group: str) -> GroupState:
    return {
        "group": group,
        "scope": scope_of(group),
        "org": group.split(":", 1)[1] if group.startswith("org:") else None,
        "tenant_conflicts": 0,
        "last_offset": -1,
        "applied": {},
        "recent_ids": [],
        "counts": {},
        "up": 0,
        "down": 0,
        "derived_up": 0,
        "derived_down": 0,
        "score_sum": 0.0,
        "score_n": 0,
        "engagement": {},
        "tools": {},
        "negatives": 0,
        "contributors": {},
        "contributors_sketch": [],  # started when the contributors map is full
        "distinct_contributors": 0,
        "evidence": [],
        "rated": [],
        "windows": [],
        "last_event_ms": 0,
        "last_synthesis_ms": None,
        "memory_version": 0,
        "in_flight": None,
        "in_flight_since": 0,
        "triggers_fired": 0,
    }


def copy_state(state: GroupState) -> GroupState:
    """A copy of ``state`` that :func:`apply_signals` can change without touching ``state``.

    Every container that folding changes in place is copied (the hourly windows,
    tool and engagement entries down to their inner lists); what it only replaces
    or appends to is copied one level deep, and the evidence items, which nothing
    changes once made, are shared. A JSON round trip of the whole state (what this
    replaces) was a quarter of the aggregate stage's time on large groups.
    ``tests/unit/test_aggregate.py`` checks that folding every kind of signal
    into a copy leaves the original as it was.
    """
    copy: dict[str, Any] = dict(state)
    copy["applied"] = dict(state["applied"])
    copy["recent_ids"] = list(state["recent_ids"])
    copy["counts"] = dict(state["counts"])
    copy["engagement"] = {k: list(v) for k, v in state["engagement"].items()}
    copy["tools"] = {k: list(v) for k, v in state["tools"].items()}
    copy["contributors"] = dict(state["contributors"])
    copy["contributors_sketch"] = list(state["contributors_sketch"])
    copy["evidence"] = list(state["evidence"])
    copy["rated"] = list(state["rated"])
    copy["windows"] = [list(bucket) for bucket in state["windows"]]
    return copy  # type: ignore[return-value]


def _is_replay(state: GroupState, signal: Signal, offset: int, limits: AggregateLimits) -> bool:
    if offset <= state["last_offset"]:
        return True
    origin = signal["origin"]
    if origin is not None:
        key = str(origin[0])
        applied = state["applied"].get(key)
        position = [origin[1], origin[2]]
        if applied is not None and position <= applied:
            return True
        state["applied"][key] = position
    else:
        signal_id = compact_id(signal["signal_id"])
        recent = state["recent_ids"]
        whole = signal["signal_id"]  # as a state written before long ids were compacted has it
        if signal_id in recent or (signal_id != whole and whole in recent):
            return True
        state["recent_ids"].append(signal_id)
    if len(state["recent_ids"]) > limits.max_recent_ids:
        del state["recent_ids"][0]
    return False


def _window(state: GroupState, timestamp: int, limits: AggregateLimits) -> list[int]:
    """The hourly bucket ``[hour_ms, events, up, down, tool_calls, tool_failures]``."""
    hour = timestamp - timestamp % HOUR_MS
    for bucket in state["windows"]:
        if bucket[0] == hour:
            return bucket
    bucket = [hour, 0, 0, 0, 0, 0]
    state["windows"].append(bucket)
    state["windows"].sort(key=lambda b: b[0])
    del state["windows"][: max(0, len(state["windows"]) - limits.window_hours)]
    return bucket


def _count_tool(state: GroupState, name: str, failed: bool, limits: AggregateLimits) -> None:
    entry = state["tools"].get(name)
    if entry is None:
        if len(state["tools"]) >= limits.max_tools:
            return
        entry = state["tools"][name] = [0, 0]
    entry[0] += 1
    entry[1] += int(failed)


SYNTHESIS_DONE = "_synthesis_done"
FORGET_USER = "_forget_user"


def _foreign(state: GroupState, signal: Signal) -> bool:
    """True when a signal from another tenant reaches a group some tenant owns.

    Every group but ``global`` belongs to the first org whose events reach it, so
    one org's feedback can never shape memory that another org's agents read.
    Signals without an org join any group; a group claimed by no org yet is
    claimed by the first signal that has one.
    """
    org = signal.get("org_id")
    if state["scope"] == "global" or signal["type"].startswith("_") or not org:
        return False
    if state["org"] is None:
        state["org"] = org
        return False
    return state["org"] != org


def _control(state: GroupState, signal: Signal) -> None:
    """Control signals from the memory stage: a synthesis finished, a user was forgotten."""
    payload = signal["payload"]
    if signal["type"] == SYNTHESIS_DONE:
        if state["in_flight"] == payload.get("trigger_id"):
            state["in_flight"] = None
        state["last_synthesis_ms"] = signal["timestamp"]
        state["memory_version"] = max(state["memory_version"], int(payload.get("version", 0)))
        kept = set(payload.get("deferred_ids", ()))
        used = set(payload.get("evidence_ids", ())) - kept
        state["evidence"] = [e for e in state["evidence"] if e["event_id"] not in used]
        state["rated"] = [e for e in state["rated"] if e["event_id"] not in used]
        state["deferred"] = [
            e["event_id"] for e in (*state["evidence"], *state["rated"]) if e["event_id"] in kept
        ]
        if "live_choices" in payload:
            state["live_choices"] = [
                {
                    "kind": str(c.get("kind")),
                    "chosen": [str(v) for v in c.get("chosen", ())],
                    "values": [str(v) for v in c.get("values", ())],
                }
                for c in payload["live_choices"]
                if isinstance(c, dict)
            ]
    elif signal["type"] == FORGET_USER:
        user = payload.get("user_id")
        state["evidence"] = [e for e in state["evidence"] if e["user_id"] != user]
        state["rated"] = [e for e in state["rated"] if e["user_id"] != user]
        removed = state["contributors"].pop(compact_id(str(user)), None)
        if removed is None:  # kept whole by a state written before ids were compacted
            removed = state["contributors"].pop(str(user), None)
        if removed is not None:
            state["distinct_contributors"] = max(0, state["distinct_contributors"] - 1)


def _fold(state: GroupState, signal: Signal, limits: AggregateLimits) -> None:
    kind = signal["type"]
    if kind.startswith("_"):
        _control(state, signal)
        return
    payload = signal["payload"]
    state["counts"][kind] = state["counts"].get(kind, 0) + 1
    state["last_event_ms"] = max(state["last_event_ms"], signal["timestamp"])
    bucket = _window(state, signal["timestamp"], limits)
    bucket[1] += 1
    user = compact_id(signal["user_id"])
    contributors = state["contributors"]
    if user in contributors:
        contributors[user] += 1
    elif len(contributors) < limits.max_contributors:
        contributors[user] = 1
    # exact while every contributor fits in the map, estimated beyond it; the sketch
    # starts (seeded with the map) only when the map is full, so the many small
    # groups do not carry and rewrite 256 registers on every write
    sketch = state["contributors_sketch"]
    if not sketch and len(contributors) >= limits.max_contributors:
        sketch.extend(new_sketch())
        for known in contributors:
            sketch_add(sketch, known)
    if sketch:
        sketch_add(sketch, user)
    if len(contributors) < limits.max_contributors:
        state["distinct_contributors"] = len(contributors)
    else:
        state["distinct_contributors"] = max(len(contributors), estimate(sketch))
    if kind == "rating":
        if payload.get("value") is None:
            fraction = rating_fraction(None, payload.get("score"), payload.get("scale"))
            if fraction is not None:
                state["score_sum"] += fraction
                state["score_n"] += 1
        value = polarity("rating", payload)  # neutral scores count in neither direction
        if is_derived(payload):
            # a machine's guess: never in people's counts or the down-vote rate
            if value == 1:
                state["derived_up"] = state.get("derived_up", 0) + 1
            elif value == -1:
                state["derived_down"] = state.get("derived_down", 0) + 1
        elif value == 1:
            state["up"] += 1
            bucket[2] += 1
        elif value == -1:
            state["down"] += 1
            bucket[3] += 1
    elif kind == "engagement":
        entry = state["engagement"].setdefault(str(payload.get("kind")), [0.0, 0.0])
        entry[0] += 1
        entry[1] += float(payload.get("value") or 0.0)
    elif kind in ("interaction", "tool_call"):
        calls: Iterable[Any] = payload.get("tool_calls", []) if kind == "interaction" else [payload]
        for call in calls:
            failed = call.get("status") != "ok"
            _count_tool(state, str(call.get("name")), failed, limits)
            bucket[4] += 1
            bucket[5] += int(failed)
        if signal["flags"]:
            state["negatives"] += 1
    if kind in EVIDENCE_TYPES or signal["flags"]:
        state["evidence"].append(_evidence(signal, limits.max_text_bytes))
        del state["evidence"][: max(0, len(state["evidence"]) - limits.max_evidence)]
    elif kind in RATED_TYPES and signal["joined"]:
        # rated examples need the response they rate; kept apart so they never crowd
        # out explanations and edits
        state["rated"].append(_evidence(signal, limits.max_text_bytes))
        del state["rated"][: max(0, len(state["rated"]) - limits.max_rated)]


def _evidence(signal: Signal, max_text_bytes: int) -> dict[str, Any]:
    return {
        "event_id": signal["event_id"],
        "type": signal["type"],
        "user_id": signal["user_id"],
        "timestamp": signal["timestamp"],
        "query": clip_optional(signal["query"], max_text_bytes),
        "response": clip_optional(signal["response"], max_text_bytes),
        # the payload's strings share a budget: a flagged interaction has up to 64 calls
        "payload": clip_strings(signal["payload"], max_text_bytes, 3 * max_text_bytes),
        "flags": signal["flags"],
    }


def weighted_support(evidence: Iterable[dict[str, Any]], policy: ScopePolicy) -> tuple[float, int]:
    """Evidence with each user's share capped, and the number of distinct users behind it."""
    per_user: dict[str, int] = {}
    for item in evidence:
        if item["type"] in EVIDENCE_TYPES:
            per_user[item["user_id"]] = per_user.get(item["user_id"], 0) + 1
    cap = max(1, math.ceil(policy.min_evidence * policy.max_user_weight))
    return float(sum(min(n, cap) for n in per_user.values())), len(per_user)


def _downvote_jump(state: GroupState, now_ms: int, policy: ScopePolicy) -> bool:
    recent = [b for b in state["windows"] if b[0] >= now_ms - now_ms % HOUR_MS]
    older = [b for b in state["windows"] if b not in recent]
    r_up, r_down = sum(b[2] for b in recent), sum(b[3] for b in recent)
    o_up, o_down = sum(b[2] for b in older), sum(b[3] for b in older)
    if r_up + r_down < policy.min_ratings_for_rate or o_up + o_down < policy.min_ratings_for_rate:
        return False
    return r_down / (r_up + r_down) - o_down / (o_up + o_down) >= policy.downvote_rate_jump


def _against_live_rule(item: dict[str, Any], choices: list[LiveChoice]) -> bool:
    """A person's rating that goes against a live rule's choice: an answer using the chosen
    value rated down, or one using another value of the same kind (and not the chosen one)
    rated up. Engagement and derived ratings are guesses and never count here."""
    if is_implicit(item) or not isinstance(item.get("response"), str):
        return False
    value = polarity(str(item["type"]), item.get("payload"))
    if value not in (1, -1):
        return False
    tokens = frozenset(content_tokens(item["response"]))
    for choice in choices:
        named = tokens & frozenset(choice["values"])
        chosen = named & frozenset(choice["chosen"])
        if (value == -1 and chosen) or (value == 1 and named and not chosen):
            return True
    return False


def _rated_against_rule(state: GroupState, deferred: set[str], policy: ScopePolicy) -> bool:
    """Enough fresh ratings contradict a live rule's exclusive choice to re-synthesise now,
    below the generic ratings weight: a preference that changed without anyone saying so
    shows first as votes against the rule that still steers the answers."""
    choices = state.get("live_choices") or []
    if not choices:
        return False
    against = [e for e in state["rated"] if _against_live_rule(e, choices)]
    if not any(e["event_id"] not in deferred for e in against):
        return False
    users = {e["user_id"] for e in against}
    return len(against) >= MIN_RATED_AGAINST_RULE and len(users) >= policy.min_users


def _said_against_rule(state: GroupState, deferred: set[str]) -> bool:
    """A fresh explanation naming another value of a live rule's choice ("answer in Spanish"
    where a rule says French): synthesise now, even below the scope's support, so the rule's
    supporters who changed their mind can withdraw their support."""
    choices = state.get("live_choices") or []
    for item in state["evidence"]:
        if item["type"] != "explanation" or item["event_id"] in deferred:
            continue
        text = (item.get("payload") or {}).get("text")
        if not isinstance(text, str):
            continue
        tokens = frozenset(content_tokens(text))
        for choice in choices:
            if (tokens & frozenset(choice["values"])) - frozenset(choice["chosen"]):
                return True
    return False


def _tool_over(calls: int, failures: int, policy: ScopePolicy) -> bool:
    return calls >= policy.min_tool_calls and failures / calls >= policy.tool_failure_rate


def _failing_tool(state: GroupState, policy: ScopePolicy) -> str | None:
    for name, (calls, failures) in sorted(state["tools"].items()):
        if _tool_over(calls, failures, policy):
            return name
    return None


def _tool_crossed(state: GroupState, policy: ScopePolicy, users: int) -> str | None:
    """A tool whose failure rate crossed the policy's line since a trigger last said so.

    Crossing up triggers even when the call that crossed it succeeded (failures early,
    then a fifth call that works: 3 of 5 is over 50%); crossing back down triggers so
    the group's tool rule is retired. ``users`` is how many people the failures came
    from (``min_users`` holds for the way up).
    """
    flagged = state.get("tools_flagged", [])
    for name, (calls, failures) in sorted(state["tools"].items()):
        over = _tool_over(calls, failures, policy)
        if over and name not in flagged and users >= policy.min_users:
            return f"tool_failure_rate:{name}"
        if not over and name in flagged:
            return f"tool_recovered:{name}"
    return None


def _flag_tool(state: GroupState, reason: str) -> None:
    kind, _, name = reason.partition(":")
    flagged = state.setdefault("tools_flagged", [])
    if kind == "tool_failure_rate" and name not in flagged:
        flagged.append(name)  # names come from the capped tools map: bounded
    elif kind == "tool_recovered" and name in flagged:
        flagged.remove(name)


def decide_trigger(
    state: GroupState, now_ms: int, policy: ScopePolicy, limits: AggregateLimits
) -> str | None:
    """The reason this group should synthesise now, or None."""
    in_flight = state["in_flight"] is not None
    if in_flight and now_ms - state["in_flight_since"] < limits.in_flight_timeout_ms:
        return None
    negatives = [e for e in state["evidence"] if e["flags"]]
    crossed = _tool_crossed(state, policy, len({e["user_id"] for e in negatives}))
    if crossed is not None and crossed.startswith("tool_recovered:"):
        return crossed  # needs no evidence: successes are not kept as evidence
    if not state["evidence"] and not state["rated"]:
        return None
    support, users = weighted_support(state["evidence"], policy)
    deferred = set(state.get("deferred", ()))
    fresh = any(
        e["type"] in EVIDENCE_TYPES and e["event_id"] not in deferred for e in state["evidence"]
    )
    if fresh and support >= policy.min_evidence and users >= policy.min_users:
        return "evidence"
    # engagement and derived ratings weigh less and count only in aggregate
    rated_weight, raters = believed_weight(state["rated"])
    fresh_rated = any(e["event_id"] not in deferred for e in state["rated"])
    if (
        fresh_rated
        and rated_weight >= max(policy.min_evidence, 5)
        and len(raters) >= policy.min_users
    ):
        return "ratings"
    if _rated_against_rule(state, deferred, policy):
        return "rated_against_rule"
    if _said_against_rule(state, deferred):
        return "explained_against_rule"
    if _downvote_jump(state, now_ms, policy):
        return "downvote_rate_jump"
    if crossed is not None:
        return crossed
    failing = _failing_tool(state, policy)
    fresh_negative = any(e["event_id"] not in deferred for e in negatives)
    if (
        failing is not None
        and fresh_negative
        and len({e["user_id"] for e in negatives}) >= policy.min_users
    ):
        return f"tool_failure_rate:{failing}"
    since = state["last_synthesis_ms"]
    if since is not None and now_ms - since >= policy.max_staleness_s * 1000 and users:
        return "staleness"
    return None


def apply_signals(
    state: GroupState | None,
    signals: Iterable[tuple[int, Signal]],
    now_ms: int,
    policy: ScopePolicy,
    limits: AggregateLimits = AggregateLimits(),
) -> tuple[GroupState, list[Trigger]]:
    """Fold ``(offset, signal)`` pairs for one group; return the state and any trigger."""
    triggers: list[Trigger] = []
    current: GroupState | None = state
    for offset, signal in signals:
        if current is None:
            current = new_state(signal["group"])
        if _is_replay(current, signal, offset, limits):
            continue
        current["last_offset"] = offset
        if _foreign(current, signal):
            current["tenant_conflicts"] += 1
            continue
        _fold(current, signal, limits)
    if current is None:
        raise ValueError("apply_signals needs a state or at least one signal")
    reason = decide_trigger(current, now_ms, policy, limits)
    if reason is not None:
        _flag_tool(current, reason)
        current["triggers_fired"] += 1
        trigger_id = f"{current['group']}#{current['triggers_fired']}"
        current["in_flight"] = trigger_id
        current["in_flight_since"] = now_ms
        triggers.append(
            {
                "trigger_id": trigger_id,
                "group": current["group"],
                "scope": current["scope"],
                "reason": reason,
                "created_ms": now_ms,
                "requires_approval": policy.requires_approval,
                "evidence": list(current["evidence"]) + list(current["rated"]),
                "stats": stats_view(current),
            }
        )
    return current, triggers


def stats_view(state: GroupState) -> dict[str, Any]:
    """The public aggregates of a group (``GET /v1/groups/{group}/stats``)."""
    ratings = state["up"] + state["down"]
    return {
        "group": state["group"],
        "scope": state["scope"],
        "org": state["org"],
        "tenant_conflicts": state["tenant_conflicts"],
        "counts": dict(state["counts"]),
        "events": sum(state["counts"].values()),
        "thumbs_up": state["up"],
        "thumbs_down": state["down"],
        "downvote_rate": state["down"] / ratings if ratings else None,
        "derived_ratings": {
            "up": state.get("derived_up", 0),
            "down": state.get("derived_down", 0),
        },
        "mean_score": state["score_sum"] / state["score_n"] if state["score_n"] else None,
        "engagement": {k: {"count": v[0], "sum": v[1]} for k, v in state["engagement"].items()},
        "tools": {
            name: {"calls": c, "failures": f, "failure_rate": f / c if c else 0.0}
            for name, (c, f) in state["tools"].items()
        },
        "negative_trajectories": state["negatives"],
        "distinct_contributors": state["distinct_contributors"],
        "pending_evidence": len(state["evidence"]),
        "pending_rated": len(state["rated"]),
        "windows": [
            {
                "hour_ms": b[0],
                "events": b[1],
                "up": b[2],
                "down": b[3],
                "tool_calls": b[4],
                "tool_failures": b[5],
            }
            for b in state["windows"]
        ],
        "last_event_ms": state["last_event_ms"],
        "last_synthesis_ms": state["last_synthesis_ms"],
        "memory_version": state["memory_version"],
        "triggers_fired": state["triggers_fired"],
        "synthesis_in_flight": state["in_flight"] is not None,
    }
