"""Control records the worker writes into the events topic, beside the events.

A release marker asks the join to give up waiting for an interaction: the pending
feedback it names is released without it (or dead-lettered) when the join reads
the marker, at the marker's place in the log. The expiry timer only decides *when*
to append one; *what* is released is decided in log order, so a worker that
replays the log after a crash releases exactly what its predecessor did, and the
signals carry the marker's offset as their origin (exact downstream dedupe). A
record is a control record when it has the ``learnloop.control`` header; readers of
the events topic other than the join skip such records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, TypedDict

import orjson

from schemas.codec import DecodeError

CONTROL_HEADER: Final[str] = "learnloop.control"
RELEASE: Final[bytes] = b"release"


class ReleaseMarker(TypedDict):
    interaction_id: str  # the join slot's key (the events topic key)
    event_ids: list[str]  # pending feedback to release without its interaction


Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


def control_kind(headers: Headers) -> bytes | None:
    """The value of the control header, or None for an ordinary event."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        return headers.get(CONTROL_HEADER)
    for name, value in headers:
        if name == CONTROL_HEADER:
            return value
    return None


def encode_release(marker: ReleaseMarker) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a release marker."""
    return orjson.dumps(marker), [(CONTROL_HEADER, RELEASE)]


def decode_release(value: bytes | None) -> ReleaseMarker:
    """Read a release marker; a bad one raises :class:`DecodeError` naming the field."""
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise DecodeError("invalid_json", "a release marker must be a JSON object") from None
    if not isinstance(data, dict):
        raise DecodeError("invalid_json", "a release marker must be a JSON object")
    interaction_id = data.get("interaction_id")
    if not isinstance(interaction_id, str) or not interaction_id:
        reason = "must be a non-empty string"
        raise DecodeError(
            "invalid_field", f"interaction_id: {reason}", [("interaction_id", reason)]
        )
    event_ids = data.get("event_ids")
    if not isinstance(event_ids, list) or not all(isinstance(e, str) for e in event_ids):
        reason = "must be a list of strings"
        raise DecodeError("invalid_field", f"event_ids: {reason}", [("event_ids", reason)])
    return {"interaction_id": interaction_id, "event_ids": event_ids}
