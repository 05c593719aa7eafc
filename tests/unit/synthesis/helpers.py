"""Builders of triggers and evidence in the shape the aggregate stage hands to synthesis."""

from __future__ import annotations

import itertools
from typing import Any

from processors.aggregate import Trigger
from processors.embedding import HashingEmbedder
from processors.groups import scope_of
from processors.policy import LearningPolicy
from processors.synthesis import OfflineSynthesizer

POLICY = LearningPolicy()
T0 = 1_790_000_000_000  # a fixed "now" in ms
_IDS = itertools.count()


def evidence(
    type_: str,
    user: str,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    ts: int = T0,
    query: str | None = "how do I call the billing API?",
    response: str | None = "use the v1 client",
    flags: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"e{next(_IDS)}",
        "type": type_,
        "user_id": user,
        "timestamp": ts,
        "query": query,
        "response": response,
        "payload": payload,
        "flags": flags or [],
    }


def explanation(user: str, text: str, **kw: Any) -> dict[str, Any]:
    return evidence("explanation", user, {"text": text}, **kw)


def edit(user: str, original: str, edited: str, **kw: Any) -> dict[str, Any]:
    return evidence("edit", user, {"original": original, "edited": edited}, **kw)


def trigger(
    group: str,
    items: list[dict[str, Any]],
    *,
    reason: str = "evidence",
    stats: dict[str, Any] | None = None,
    trigger_id: str | None = None,
) -> Trigger:
    scope = scope_of(group)
    return {
        "trigger_id": trigger_id or f"{group}#1",
        "group": group,
        "scope": scope,
        "reason": reason,
        "created_ms": T0,
        "requires_approval": POLICY.for_scope(scope).requires_approval,
        "evidence": items,
        "stats": stats or {},
    }


def synthesizer(**kw: Any) -> OfflineSynthesizer:
    return OfflineSynthesizer(HashingEmbedder(), POLICY.for_scope, **kw)
