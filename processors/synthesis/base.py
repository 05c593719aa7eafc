"""The synthesizer interface: a trigger's evidence in, candidate memory items out.

A synthesizer only proposes; consolidation (``processors.consolidate``) decides what
the group keeps. Both the offline synthesizer and the LLM one return the same
:class:`SynthesisResult`, and evidence they did not use is listed in ``skipped``
with a reason, so nothing disappears silently (an injection attempt, too little
support, a neutral rating).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol, TypedDict

from processors.aggregate import Trigger
from processors.memory import ItemKind, MemoryItem, Provenance, estimate_tokens, item_id

MAX_EVENT_IDS: Final = 20
MAX_USER_IDS: Final = 50
# the order items appear in a group's memory (and so in a prompt): rules first
KIND_ORDER: Final[dict[str, int]] = {
    "rule": 0,
    "tool_rule": 1,
    "correction": 2,
    "preferred_example": 3,
    "avoided_example": 4,
}


class SynthesisResult(TypedDict):
    items: list[MemoryItem]  # candidates, to be consolidated with the group's memory
    skipped: list[dict[str, Any]]  # {event_id, type, reason, detail}: evidence not used, and why


class Synthesizer(Protocol):
    """Turns one trigger's evidence into candidate items (pure; no clock but ``now_ms``)."""

    name: str
    prompt_version: str | None

    def synthesize(
        self, trigger: Trigger, current: Sequence[MemoryItem], now_ms: int
    ) -> SynthesisResult: ...


def skip(evidence: dict[str, Any], reason: str, detail: str = "") -> dict[str, Any]:
    """One ``skipped`` entry; never carries the evidence text itself (it may hold PII)."""
    return {
        "event_id": str(evidence.get("event_id", "")),
        "type": str(evidence.get("type", "")),
        "reason": reason,
        "detail": detail,
    }


def provenance(
    evidence: Iterable[dict[str, Any]],
    *,
    synthesizer: str,
    prompt_version: str | None,
    derived_by: str,
    trigger: Trigger,
) -> Provenance:
    """Who and what supports an item: the latest event ids and the distinct users (bounded)."""
    ordered = sorted(evidence, key=lambda e: (int(e.get("timestamp") or 0), str(e["event_id"])))
    event_ids = list(dict.fromkeys(str(e["event_id"]) for e in ordered))[-MAX_EVENT_IDS:]
    users = sorted({str(e.get("user_id", "")) for e in ordered} - {""})
    return {
        "event_ids": event_ids,
        "user_ids": users[:MAX_USER_IDS],
        "distinct_users": len(users),
        "synthesizer": synthesizer,
        "prompt_version": prompt_version,
        "derived_by": derived_by,
        "trigger_id": trigger["trigger_id"],
        "trigger_reason": trigger["reason"],
    }


def last_support_ms(evidence: Iterable[dict[str, Any]], now_ms: int) -> int:
    """The newest supporting event's time (never in the future), or ``now_ms``."""
    stamps = [int(e.get("timestamp") or 0) for e in evidence]
    newest = max(stamps, default=0)
    return min(newest, now_ms) if newest > 0 else now_ms


def new_item(
    trigger: Trigger,
    kind: ItemKind,
    key: str,
    text: str,
    *,
    strength: float,
    support: int,
    now_ms: int,
    prov: Provenance,
    supported_ms: int,
) -> MemoryItem:
    """A candidate item with a deterministic id; proposed when the scope needs approval."""
    return {
        "item_id": item_id(trigger["group"], kind, key),
        "group": trigger["group"],
        "kind": kind,
        "text": text,
        "status": "proposed" if trigger["requires_approval"] else "active",
        "strength": round(float(strength), 6),
        "support": int(support),
        "tokens": estimate_tokens(text),
        "created_ms": now_ms,
        "updated_ms": now_ms,
        "last_support_ms": supported_ms,
        "provenance": prov,
    }
