"""Validation of events against the Avro schema and the brief's semantic rules.

Every problem is reported as ``(field, reason)`` with a dotted field path, so an
HTTP 4xx answer or a dead-letter header can say exactly what is wrong. Nothing
here raises on bad input: errors are data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from schemas.events import EVENT_TYPES, FEEDBACK_TYPES, EventRecord
from schemas.schema_files import EVENT_SCHEMA, NAMED_TYPES, payload_schema

FieldError = tuple[str, str]
_ENVELOPE_FIELDS: Final[frozenset[str]] = frozenset(
    {"event_id", "type", "timestamp", "user_id", "team_id", "org_id", "interaction_id", "metadata"}
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits that keep one event from exhausting memory downstream."""

    max_text_chars: int = 65_536
    max_id_chars: int = 256
    max_metadata_entries: int = 64
    max_tool_calls: int = 64
    max_event_bytes: int = 1_048_576


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check(schema: Any, value: Any, path: str, limits: Limits, out: list[FieldError]) -> None:
    """Walk ``value`` along the parsed Avro ``schema`` and collect type errors."""
    if isinstance(schema, str) and schema in NAMED_TYPES:
        schema = NAMED_TYPES[schema]
    if isinstance(schema, list):  # union
        if value is None:
            if "null" not in schema:
                out.append((path, "is required"))
            return
        branches = [b for b in schema if b != "null"]
        _check(branches[0], value, path, limits, out)
        return
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "record":
        if not isinstance(value, Mapping):
            out.append((path, f"must be an object, got {_type_name(value)}"))
            return
        for field in schema["fields"]:
            name = field["name"]
            sub = f"{path}.{name}" if path else name
            if name not in value:
                if "default" not in field:
                    out.append((sub, "is required"))
                continue
            _check(field["type"], value[name], sub, limits, out)
    elif kind == "string":
        if not isinstance(value, str):
            out.append((path, f"must be a string, got {_type_name(value)}"))
        elif len(value) > limits.max_text_chars:
            out.append((path, f"is {len(value)} characters, more than {limits.max_text_chars}"))
    elif kind == "enum":
        if value not in schema["symbols"]:
            out.append((path, f"must be one of {', '.join(schema['symbols'])}, got {value!r}"))
    elif kind in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            out.append((path, f"must be an integer, got {_type_name(value)}"))
    elif kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append((path, f"must be a number, got {_type_name(value)}"))
    elif kind == "map":
        if not isinstance(value, Mapping):
            out.append((path, f"must be an object of strings, got {_type_name(value)}"))
            return
        if len(value) > limits.max_metadata_entries:
            out.append((path, f"has {len(value)} entries, more than {limits.max_metadata_entries}"))
            return
        for key, item in value.items():
            _check(schema["values"], item, f"{path}.{key}", limits, out)
    elif kind == "array":
        if not isinstance(value, list):
            out.append((path, f"must be an array, got {_type_name(value)}"))
            return
        if len(value) > limits.max_tool_calls:
            out.append((path, f"has {len(value)} items, more than {limits.max_tool_calls}"))
            return
        for index, item in enumerate(value):
            _check(schema["items"], item, f"{path}[{index}]", limits, out)


def _semantic(record: Mapping[str, Any], limits: Limits) -> list[FieldError]:
    """Rules the schema cannot express."""
    out: list[FieldError] = []
    get = record.get  # runs once per consumed event: keep lookups out of the loops
    for name in ("event_id", "user_id"):
        value = get(name)
        if isinstance(value, str):
            if not value.strip():
                out.append((name, "must not be empty"))
            elif len(value) > limits.max_id_chars:
                out.append((name, f"is longer than {limits.max_id_chars} characters"))
    kind = get("type")
    if kind in FEEDBACK_TYPES and not get("interaction_id"):
        out.append(("interaction_id", f"is required for {kind} events"))
    for other in EVENT_TYPES:
        if other != kind and get(other) is not None:
            out.append((other, f"must not be set on a {kind} event"))
    payload = get(kind) if isinstance(kind, str) else None
    if kind in EVENT_TYPES and payload is None:
        out.append((str(kind), "payload is missing"))
    # dict first: an exact-type check, where the Mapping ABC check alone is slow
    if kind == "rating" and isinstance(payload, dict | Mapping):
        value, score, scale = payload.get("value"), payload.get("score"), payload.get("scale")
        if value is None and score is None:
            out.append(("value", "a rating needs value (+1 or -1) or score with scale"))
        if value is not None and value not in (1, -1):
            out.append(("value", f"must be +1 or -1, got {value!r}"))
        if score is not None:
            if scale is None or not isinstance(scale, int | float) or scale <= 0:
                out.append(("scale", "must be a positive number when score is given"))
            elif isinstance(score, int | float) and not 0 <= score <= scale:
                out.append(("score", f"must be between 0 and scale ({scale}), got {score}"))
    return out


def _sizes(record: Mapping[str, Any], limits: Limits) -> list[FieldError]:
    """The size limits for Avro-decoded records, whose types need no checking.

    Only the fields that can be long are looked at, so this stays cheap per event.
    """
    out: list[FieldError] = []
    metadata = record.get("metadata") or {}
    if len(metadata) > limits.max_metadata_entries:
        out.append(
            ("metadata", f"has {len(metadata)} entries, more than {limits.max_metadata_entries}")
        )
    if any(len(v) > limits.max_text_chars for v in metadata.values()):
        out.append(("metadata", f"has a value longer than {limits.max_text_chars} characters"))
    kind = record.get("type")
    payload = record.get(kind) if isinstance(kind, str) else None
    if isinstance(payload, dict):
        for name, value in payload.items():
            if isinstance(value, str) and len(value) > limits.max_text_chars:
                out.append((name, f"is {len(value)} characters, more than {limits.max_text_chars}"))
        calls = payload.get("tool_calls")
        if isinstance(calls, list) and len(calls) > limits.max_tool_calls:
            out.append(("tool_calls", f"has {len(calls)} items, more than {limits.max_tool_calls}"))
    return out


def validate_record(
    record: Mapping[str, Any], limits: Limits = Limits(), *, typed: bool = False
) -> list[FieldError]:
    """All problems with an envelope-shaped record; empty when it is valid.

    ``typed`` records come out of the Avro decoder, which already guarantees the
    types, so only the semantic rules are checked (a third of the cost).
    """
    if typed:
        return _sizes(record, limits) or _semantic(record, limits)
    errors: list[FieldError] = []
    _check(EVENT_SCHEMA, record, "", limits, errors)
    if errors:
        return errors
    return _semantic(record, limits)


def _parse_timestamp(value: object) -> int | FieldError:
    if isinstance(value, bool):
        return ("timestamp", "must be an RFC 3339 string")
    if isinstance(value, int | float):  # epoch milliseconds, accepted for convenience
        return int(value)
    if not isinstance(value, str):
        return ("timestamp", f"must be an RFC 3339 string, got {_type_name(value)}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return ("timestamp", f"is not an RFC 3339 date-time: {value[:64]!r}")
    if parsed.tzinfo is None:
        return ("timestamp", "needs a time zone offset (e.g. Z)")
    return int(parsed.timestamp() * 1000)


def from_json_event(
    data: object, limits: Limits = Limits()
) -> tuple[EventRecord | None, list[FieldError]]:
    """Turn the flat JSON form of the brief into an envelope record, or say why not."""
    if not isinstance(data, Mapping):
        return None, [("", f"an event must be a JSON object, got {_type_name(data)}")]
    kind = data.get("type")
    if kind not in EVENT_TYPES:
        return None, [("type", f"must be one of {', '.join(EVENT_TYPES)}, got {kind!r}")]
    record: dict[str, Any] = {"metadata": {}}
    payload: dict[str, Any] = {}
    for key, value in data.items():
        if key in _ENVELOPE_FIELDS:
            record[key] = value
        else:
            payload[key] = value
    if "timestamp" not in data:
        return None, [("timestamp", "is required")]
    stamp = _parse_timestamp(data["timestamp"])
    if isinstance(stamp, tuple):
        return None, [stamp]
    record["timestamp"] = stamp
    if kind == "interaction" and not record.get("interaction_id"):
        record["interaction_id"] = record.get("event_id")
    known = {f["name"] for f in payload_schema(str(kind))["fields"]}
    unknown = sorted(set(payload) - known)
    if unknown:
        return None, [(unknown[0], f"is not a field of {kind} events")]
    record[str(kind)] = payload
    prefix = f"{kind}."
    errors = [
        (path.removeprefix(prefix), reason) for path, reason in validate_record(record, limits)
    ]
    if errors:
        return None, errors
    return _with_defaults(record), []


def _with_defaults(record: dict[str, Any]) -> EventRecord:
    """Fill optional fields so every record has the same keys as a decoded Avro one."""
    for name in ("team_id", "org_id", "interaction_id"):
        record.setdefault(name, None)
    payload = record[record["type"]]
    for field in payload_schema(record["type"])["fields"]:
        if field["name"] not in payload and "default" in field:
            payload[field["name"]] = field["default"]
    for call in payload.get("tool_calls", ()) if record["type"] == "interaction" else ():
        call.setdefault("arguments", "")
        call.setdefault("error", None)
        call.setdefault("latency_ms", None)
    return cast(EventRecord, record)


def to_json_event(record: EventRecord) -> dict[str, Any]:
    """The flat JSON form of a record (inverse of :func:`from_json_event`)."""
    out: dict[str, Any] = {
        key: value for key, value in record.items() if key in _ENVELOPE_FIELDS and value is not None
    }
    out["timestamp"] = (
        datetime.fromtimestamp(record["timestamp"] / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    payload = record.get(record["type"])
    if isinstance(payload, Mapping):
        out.update(payload)
    return out
