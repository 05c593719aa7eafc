"""Join feedback to its interaction, dedupe by event id, and attribute to groups.

State is one :class:`JoinSlot` per interaction id (the events topic key), so the
join, the dedupe and the expiry of one interaction live in one bounded value.
Feedback that arrives before its interaction waits in the slot. After
``wait_ms`` (:func:`overdue`) the worker appends a release marker to the events
topic, and :func:`release` lets the feedback go on without its interaction (or
dead-letters it, as configured) when the join reads the marker: in log order, so a
replay after a crash releases the same feedback at the same origin. Slots past the
retention are dropped (:func:`expired`).

The slot is also where "nobody gave feedback on this" is known: an interaction in
the judge's sample keeps a :class:`~processors.judging.JudgeCandidate` until
explicit feedback arrives (which cancels it) or its feedback window closes, when
:func:`expire_judging` turns it into a judge request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict, cast

from processors.clip import clip, clip_strings
from processors.groups import DerivedGroupRule, resolve_groups
from processors.implicit import trajectory_flags
from processors.judging import (
    DERIVED_BY_KEY,
    JudgeCandidate,
    JudgeConfig,
    JudgeRequest,
    is_derived,
    sampled,
)
from processors.signals import DeadLetter, Signal
from schemas.events import FEEDBACK_TYPES, EventRecord


class InteractionSummary(TypedDict):
    query: str
    response: str
    user_id: str
    timestamp: int


class PendingFeedback(TypedDict):
    event: EventRecord
    arrived_ms: int


class JoinSlot(TypedDict):
    interaction: InteractionSummary | None
    seen: list[str]
    pending: list[PendingFeedback]
    touched_ms: int
    judge: NotRequired[JudgeCandidate | None]  # sampled and not yet rated by anyone
    rated: NotRequired[bool]  # a person gave explicit feedback on this interaction


#: feedback a person gives on purpose; engagement is implicit and does not count
EXPLICIT_TYPES = frozenset({"rating", "explanation", "edit"})
#: an interaction payload's fields that its signals carry as their own, not in the payload
_CARRIED_APART = frozenset({"query", "response"})


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """What the join needs from the settings."""

    rules: tuple[DerivedGroupRule, ...] = ()
    wait_ms: int = 30_000
    retention_ms: int = 7 * 86_400_000
    orphan_feedback: Literal["process", "dead_letter"] = "process"
    max_seen: int = 256
    max_pending: int = 64
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    #: texts kept in a slot and sent in signals are cut to this many UTF-8 bytes
    #: (processors.clip): slots live for the whole retention
    max_text_bytes: int = 1024


def empty_slot(now_ms: int) -> JoinSlot:
    return {"interaction": None, "seen": [], "pending": [], "touched_ms": now_ms}


def _signals(
    event: EventRecord,
    interaction: InteractionSummary | None,
    origin: list[int] | None,
    config: JoinConfig,
) -> list[Signal]:
    kind = event["type"]
    payload = cast(dict[str, Any], event.get(kind) or {})
    if kind == "rating" and is_derived(event["metadata"]):
        # the mark travels with the signal so aggregation and synthesis weigh it down
        payload = {**payload, DERIVED_BY_KEY: event["metadata"][DERIVED_BY_KEY]}
    flags: list[str] = []
    query = response = None
    if kind == "interaction":
        flags = trajectory_flags(payload.get("tool_calls", []))  # on the arguments as sent
        # the query and response travel once, as the signal's own (cut) fields: in the
        # payload too they doubled every signal and evidence entry, and used up the
        # evidence payload's text budget before the tool calls' arguments
        payload = {k: v for k, v in payload.items() if k not in _CARRIED_APART}
    if interaction is not None:  # an interaction's own slot summary: its texts, cut once
        query, response = interaction["query"], interaction["response"]
    payload = clip_strings(payload, config.max_text_bytes)
    groups = resolve_groups(
        event["user_id"], event["team_id"], event["org_id"], event["metadata"], config.rules
    )
    return [
        {
            "signal_id": f"{event['event_id']}|{group}",
            "group": group,
            "origin": origin,
            "event_id": event["event_id"],
            "type": kind,
            "timestamp": event["timestamp"],
            "user_id": event["user_id"],
            "org_id": event["org_id"],
            "interaction_id": event["interaction_id"],
            "joined": kind == "interaction" or interaction is not None,
            "query": query,
            "response": response,
            "payload": payload,
            "flags": flags,
        }
        for group in groups
    ]


def _explicit(event: EventRecord) -> bool:
    return event["type"] in EXPLICIT_TYPES and not is_derived(event["metadata"])


def _candidate(event: EventRecord, now_ms: int, config: JudgeConfig) -> JudgeCandidate:
    payload = cast(dict[str, Any], event.get("interaction") or {})
    return {
        "interaction_id": event["interaction_id"] or event["event_id"],
        "due_ms": now_ms + config.after_ms,
        "team_id": event["team_id"],
        "org_id": event["org_id"],
        "metadata": dict(event["metadata"]),
        "tool_calls": [dict(call) for call in payload.get("tool_calls") or []],
    }


def _remember(slot: JoinSlot, event_id: str, config: JoinConfig) -> None:
    slot["seen"].append(event_id)
    if len(slot["seen"]) > config.max_seen:
        del slot["seen"][: len(slot["seen"]) - config.max_seen]


def process_event(
    slot: JoinSlot | None,
    event: EventRecord,
    origin: tuple[int, int],
    now_ms: int,
    config: JoinConfig,
) -> tuple[JoinSlot, list[Signal], list[DeadLetter]]:
    """Apply one event to its interaction's slot; returns the signals it releases.

    ``origin`` is ``(partition, offset)`` of the event; each signal gets a
    sub-index so replays produce byte-identical origins.
    """
    state: JoinSlot = slot if slot is not None else empty_slot(now_ms)
    state["touched_ms"] = now_ms
    if event["event_id"] in state["seen"]:
        return state, [], []
    partition, offset = origin
    out: list[Signal] = []
    dead: list[DeadLetter] = []
    kind = event["type"]
    if kind == "interaction":
        payload = event.get("interaction") or {"query": "", "response": ""}
        state["interaction"] = {
            "query": clip(payload["query"], config.max_text_bytes),
            "response": clip(payload["response"], config.max_text_bytes),
            "user_id": event["user_id"],
            "timestamp": event["timestamp"],
        }
        _remember(state, event["event_id"], config)
        out.extend(_signals(event, state["interaction"], None, config))
        iid = event["interaction_id"] or event["event_id"]
        rated = state.get("rated", False) or any(_explicit(p["event"]) for p in state["pending"])
        if rated:
            state["rated"] = True
        if (
            config.judge.enabled
            and not rated
            and sampled(iid, config.judge.sample_rate, config.judge.seed)
        ):
            state["judge"] = _candidate(event, now_ms, config.judge)
        else:
            state["judge"] = None
        for waiting in state["pending"]:
            _remember(state, waiting["event"]["event_id"], config)
            out.extend(_signals(waiting["event"], state["interaction"], None, config))
        state["pending"] = []
    elif kind in FEEDBACK_TYPES and state["interaction"] is None:
        if len(state["pending"]) >= config.max_pending:
            dead.append(
                {
                    "reason": "pending_overflow",
                    "detail": f"more than {config.max_pending} feedback events wait for "
                    f"interaction {event['interaction_id']}",
                    "event_id": event["event_id"],
                }
            )
            _remember(state, event["event_id"], config)
        elif all(p["event"]["event_id"] != event["event_id"] for p in state["pending"]):
            # its text cut now, as its signals will be: 64 waiting edits must fit a slot
            body = clip_strings(event.get(kind), config.max_text_bytes)
            kept = cast(EventRecord, {**event, kind: body})
            state["pending"].append({"event": kept, "arrived_ms": now_ms})
        return state, [], dead
    else:
        _remember(state, event["event_id"], config)
        out.extend(_signals(event, state["interaction"], None, config))
        if _explicit(event):
            state["judge"] = None  # a person rated it: the judge is not asked
            state["rated"] = True
    for index, signal in enumerate(out):
        signal["origin"] = [partition, offset, index]
    return state, out, dead


def overdue(slot: JoinSlot, now_ms: int, config: JoinConfig) -> list[str]:
    """Ids of the pending feedback that has waited ``wait_ms`` for its interaction.

    The caller appends a release marker naming them to the events topic; the
    release itself happens in log order, in :func:`release`.
    """
    return [
        waiting["event"]["event_id"]
        for waiting in slot["pending"]
        if now_ms - waiting["arrived_ms"] >= config.wait_ms
    ]


def release(
    slot: JoinSlot | None,
    event_ids: list[str],
    origin: tuple[int, int],
    now_ms: int,
    config: JoinConfig,
) -> tuple[JoinSlot | None, list[Signal], list[DeadLetter]]:
    """Apply a release marker: the named pending feedback goes on without its interaction.

    Feedback no longer pending (its interaction came first, or an earlier marker
    released it) is left alone, so a marker read twice, or written twice by two
    owners of the slot, changes nothing the second time. ``origin`` is the
    marker's ``(partition, offset)``.
    """
    if slot is None or not slot["pending"]:
        return slot, [], []
    named = set(event_ids)
    out: list[Signal] = []
    dead: list[DeadLetter] = []
    keep: list[PendingFeedback] = []
    for waiting in slot["pending"]:
        event = waiting["event"]
        if event["event_id"] not in named:
            keep.append(waiting)
            continue
        _remember(slot, event["event_id"], config)
        if config.orphan_feedback == "dead_letter":
            dead.append(
                {
                    "reason": "interaction_missing",
                    "detail": f"interaction {event['interaction_id']} did not arrive within "
                    f"{config.wait_ms} ms",
                    "event_id": event["event_id"],
                }
            )
        else:
            out.extend(_signals(event, None, None, config))
    slot["pending"] = keep
    slot["touched_ms"] = now_ms
    partition, offset = origin
    for index, signal in enumerate(out):
        signal["origin"] = [partition, offset, index]
    return slot, out, dead


def expired(slot: JoinSlot, now_ms: int, config: JoinConfig) -> bool:
    """A slot with nothing waiting and untouched for the retention: it can be dropped."""
    return not slot["pending"] and now_ms - slot["touched_ms"] >= config.retention_ms


def expire_judging(slot: JoinSlot, now_ms: int) -> tuple[JoinSlot, list[JudgeRequest]]:
    """A judge request for a sampled interaction whose feedback window closed unrated.

    The candidate is cleared, so the request is made once; the caller writes the
    slot only after the request is delivered, so a crash in between repeats it
    (the judge's ratings have deterministic ids, so a repeat is harmless).
    """
    candidate = slot.get("judge")
    interaction = slot["interaction"]
    if candidate is None or interaction is None or now_ms < candidate["due_ms"]:
        return slot, []
    slot["judge"] = None
    request: JudgeRequest = {
        "request_id": f"judge:{candidate['interaction_id']}",
        "interaction_id": candidate["interaction_id"],
        "user_id": interaction["user_id"],
        "team_id": candidate["team_id"],
        "org_id": candidate["org_id"],
        "metadata": candidate["metadata"],
        "query": interaction["query"],
        "response": interaction["response"],
        "tool_calls": candidate["tool_calls"],
        "timestamp": interaction["timestamp"],
        "attempt": 0,
        "not_before_ms": 0,
    }
    return slot, [request]


def judging_due(slot: JoinSlot, now_ms: int) -> bool:
    candidate = slot.get("judge")
    return candidate is not None and now_ms >= candidate["due_ms"]
