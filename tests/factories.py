"""Small builders of events in the brief's JSON form, shared by every test tier."""

from __future__ import annotations

from typing import Any

BASE_TS = "2026-11-25T08:00:00Z"


def interaction(
    event_id: str,
    user: str = "alice",
    team: str | None = "search",
    org: str | None = "acme",
    **extra: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": "interaction",
        "timestamp": BASE_TS,
        "user_id": user,
        "query": "how do I call the billing API?",
        "response": "use the v1 client",
        "tool_calls": [],
    }
    if team:
        event["team_id"] = team
    if org:
        event["org_id"] = org
    event.update(extra)
    return event


def feedback(
    event_id: str,
    type_: str,
    interaction_id: str,
    user: str = "alice",
    team: str | None = "search",
    org: str | None = "acme",
    **payload: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": type_,
        "timestamp": BASE_TS,
        "user_id": user,
        "interaction_id": interaction_id,
    }
    if team:
        event["team_id"] = team
    if org:
        event["org_id"] = org
    defaults: dict[str, dict[str, Any]] = {
        "rating": {"value": -1},
        "explanation": {"text": "wrong: use the v2 API"},
        "edit": {"original": "use the v1 client", "edited": "use the v2 client"},
        "engagement": {"kind": "copy", "value": 1.0},
    }
    event.update(defaults.get(type_, {}))
    event.update(payload)
    return event
