"""Text kept in state is cut to a byte budget.

Events may carry up to ``max_text_chars`` per text field (64 Ki characters by
default), and a group's state keeps dozens of evidence entries, each with the
query, the response and the feedback's own text. Uncut, one group with long
answers outgrows Kafka's message limit (1 MB by default): its changelog record
is refused and every group sharing its signals partition stops learning. Join
slots keep each interaction's query and response for the whole retention, so the
same cut bounds a worker's memory. A cut string ends with ``…`` so that whoever
reads an example in the memory panel sees that it was shortened.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

ELLIPSIS = "…"
_ELLIPSIS_BYTES = len(ELLIPSIS.encode())
#: past a budget, strings keep this much: a tool call's status and a short name survive
FLOOR_BYTES = 16


def clip(text: str, max_bytes: int) -> str:
    """``text`` if it fits in ``max_bytes`` of UTF-8, else its longest prefix that does + ``…``."""
    if len(text) * 4 <= max_bytes:  # fits whatever the characters are: no encoding needed
        return text
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max(0, max_bytes - _ELLIPSIS_BYTES)].decode(errors="ignore") + ELLIPSIS


def clip_optional(text: str | None, max_bytes: int) -> str | None:
    return None if text is None else clip(text, max_bytes)


def clip_strings(value: Any, max_bytes: int, budget: int | None = None) -> Any:
    """``value`` with every string in it (in nested dicts and lists too) clipped.

    Each string gets at most ``max_bytes``; with a ``budget``, all of them
    together get about that many (past it, each keeps ``FLOOR_BYTES``), which
    bounds a value holding a list of strings (an interaction's 64 tool calls) too.
    Returns ``value`` itself when nothing needed cutting, so the common case
    allocates nothing. That case is recognised without walking the value: its
    JSON is at least as long as all its strings' UTF-8 together, so a value whose
    JSON fits the smaller of ``max_bytes`` and ``budget`` has nothing to cut.
    """
    if _json_size(value) <= (max_bytes if budget is None else min(max_bytes, budget)):
        return value
    left = [budget if budget is not None else -1]
    return _clip(value, max_bytes, left)


def _json_size(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError:  # not JSON (orjson.JSONEncodeError is a TypeError): walk it
        return sys.maxsize


def _clip(value: Any, max_bytes: int, left: list[int]) -> Any:
    if isinstance(value, str):
        if left[0] < 0:  # no budget
            return clip(value, max_bytes)
        cut = clip(value, max(FLOOR_BYTES, min(max_bytes, left[0])))
        left[0] = max(0, left[0] - len(cut.encode()))
        return cut
    if isinstance(value, dict):
        clipped = {key: _clip(item, max_bytes, left) for key, item in value.items()}
        changed = any(clipped[key] is not item for key, item in value.items())
        return clipped if changed else value
    if isinstance(value, list):
        items = [_clip(item, max_bytes, left) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value
