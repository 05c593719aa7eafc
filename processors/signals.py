"""The joined, group-attributed signal that flows from the join stage to aggregation."""

from __future__ import annotations

from typing import Any, TypedDict


class Signal(TypedDict):
    """One event's contribution to one preference group.

    ``origin`` is ``[events partition, offset, sub-index]`` of the input that
    caused it (or None when a timer released it): per group and partition it only
    grows, which lets aggregation drop replays after a crash without keeping
    every id it ever saw.
    """

    signal_id: str
    group: str
    origin: list[int] | None
    event_id: str
    type: str
    timestamp: int
    user_id: str
    org_id: str | None
    interaction_id: str | None
    joined: bool
    query: str | None
    response: str | None
    payload: dict[str, Any]
    flags: list[str]


class DeadLetter(TypedDict):
    """Something that could not be processed, and why; sent to the dead-letter topic."""

    reason: str
    detail: str
    event_id: str | None


def signal_problem(value: Any) -> str | None:
    """What makes a decoded value unusable as a :class:`Signal`, or None if it is one.

    Signals arrive many to a message; checking each one lets a single bad one be
    dead-lettered on its own instead of failing the whole message.
    """
    if not isinstance(value, dict):
        return f"not an object: {type(value).__name__}"
    for name, kind in _REQUIRED:
        if not isinstance(value.get(name), kind):
            return f"field {name}: expected {kind.__name__}"
    origin = value.get("origin")
    if origin is not None and not (
        isinstance(origin, list) and len(origin) == 3 and all(isinstance(x, int) for x in origin)
    ):
        return "field origin: expected null or [partition, offset, index]"
    return None


_REQUIRED: tuple[tuple[str, type], ...] = (
    ("signal_id", str),
    ("group", str),
    ("event_id", str),
    ("type", str),
    ("timestamp", int),
    ("user_id", str),
    ("payload", dict),
    ("flags", list),
)
