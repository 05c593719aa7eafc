"""Join feedback to its interaction, dedupe by event id, and attribute to groups.

State is one :class:`JoinSlot` per interaction id (the events topic key), so the
join, the dedupe and the expiry of one interaction live in one bounded value.
Feedback that arrives before its interaction waits in the slot; :func:`expire`
releases it after ``wait_ms`` (processed without the interaction, or
dead-lettered, as configured) and drops slots older than the retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

from processors.groups import DerivedGroupRule, resolve_groups
from processors.implicit import trajectory_flags
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


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """What the join needs from the settings."""

    rules: tuple[DerivedGroupRule, ...] = ()
    wait_ms: int = 30_000
    retention_ms: int = 7 * 86_400_000
    orphan_feedback: Literal["process", "dead_letter"] = "process"
    max_seen: int = 256
    max_pending: int = 64


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
    flags: list[str] = []
    query = response = None
    if kind == "interaction":
        query, response = payload.get("query"), payload.get("response")
        flags = trajectory_flags(payload.get("tool_calls", []))
    elif interaction is not None:
        query, response = interaction["query"], interaction["response"]
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
            "query": payload["query"],
            "response": payload["response"],
            "user_id": event["user_id"],
            "timestamp": event["timestamp"],
        }
        _remember(state, event["event_id"], config)
        out.extend(_signals(event, None, None, config))
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
            state["pending"].append({"event": event, "arrived_ms": now_ms})
        return state, [], dead
    else:
        _remember(state, event["event_id"], config)
        out.extend(_signals(event, state["interaction"], None, config))
    for index, signal in enumerate(out):
        signal["origin"] = [partition, offset, index]
    return state, out, dead


def expire(
    slot: JoinSlot, now_ms: int, config: JoinConfig
) -> tuple[JoinSlot | None, list[Signal], list[DeadLetter]]:
    """Release feedback that waited too long and drop a slot past its retention."""
    out: list[Signal] = []
    dead: list[DeadLetter] = []
    keep: list[PendingFeedback] = []
    for waiting in slot["pending"]:
        if now_ms - waiting["arrived_ms"] < config.wait_ms:
            keep.append(waiting)
            continue
        event = waiting["event"]
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
    if not keep and now_ms - slot["touched_ms"] >= config.retention_ms:
        return None, out, dead
    return slot, out, dead
