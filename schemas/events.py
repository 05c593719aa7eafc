"""Typed views of a decoded event, shaped like the Avro ``learnloop.Event`` record.

Decoded events stay plain dicts (decoding into classes would halve throughput);
these TypedDicts let mypy check the code that reads them.
"""

from __future__ import annotations

from typing import Final, Literal, NotRequired, TypedDict

EventType = Literal["interaction", "rating", "explanation", "edit", "engagement", "tool_call"]
EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "interaction",
    "rating",
    "explanation",
    "edit",
    "engagement",
    "tool_call",
)
#: Feedback refers to an interaction through ``interaction_id``.
FEEDBACK_TYPES: Final[frozenset[str]] = frozenset({"rating", "explanation", "edit", "engagement"})
TOOL_STATUSES: Final[tuple[str, ...]] = ("ok", "error", "timeout")
ENGAGEMENT_KINDS: Final[tuple[str, ...]] = (
    "dwell_ms",
    "return_visit",
    "conversion",
    "copy",
    "abandon",
)


class ToolCall(TypedDict):
    name: str
    arguments: str
    status: str
    error: str | None
    latency_ms: float | None


class Interaction(TypedDict):
    query: str
    response: str
    model: str | None
    tool_calls: list[ToolCall]


class Rating(TypedDict):
    value: int | None
    score: float | None
    scale: float | None


class Explanation(TypedDict):
    text: str


class Edit(TypedDict):
    original: str
    edited: str


class Engagement(TypedDict):
    kind: str
    value: float


class EventRecord(TypedDict):
    """One event as the codec returns it; ``timestamp`` is epoch milliseconds (UTC)."""

    event_id: str
    type: EventType
    timestamp: int
    user_id: str
    team_id: str | None
    org_id: str | None
    interaction_id: str | None
    metadata: dict[str, str]
    interaction: NotRequired[Interaction | None]
    rating: NotRequired[Rating | None]
    explanation: NotRequired[Explanation | None]
    edit: NotRequired[Edit | None]
    engagement: NotRequired[Engagement | None]
    tool_call: NotRequired[ToolCall | None]
