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
    dead-lettered on its own instead of failing the whole message. Every signal
    is checked, so a well-formed one is recognised in one expression (exact types,
    as JSON decodes them) and only a suspect one is examined field by field.
    """
    if type(value) is dict:
        get = value.get
        origin = get("origin")
        if (
            type(get("signal_id")) is str
            and type(get("group")) is str
            and type(get("event_id")) is str
            and type(get("type")) is str
            and type(get("timestamp")) is int
            and type(get("user_id")) is str
            and type(get("payload")) is dict
            and type(get("flags")) is list
            and (
                origin is None
                or (
                    type(origin) is list
                    and len(origin) == 3
                    and type(origin[0]) is int
                    and type(origin[1]) is int
                    and type(origin[2]) is int
                )
            )
        ):
            return None
    return _problem(value)


def _problem(value: Any) -> str | None:
    """The field by field check, with a message naming the field."""
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
