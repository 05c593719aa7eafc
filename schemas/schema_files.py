"""Loads the ``.avsc`` files once; the parsed Event schema is shared by codec and validator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form

AVRO_DIR: Final[Path] = Path(__file__).parent / "avro"
HISTORY_DIR: Final[Path] = AVRO_DIR / "history"


def _load_event_schema() -> Any:
    return load_schema(str(AVRO_DIR / "learnloop.Event.avsc"), _write_hint=False)


EVENT_SCHEMA: Final[Any] = _load_event_schema()


def _named_types(schema: Any, found: dict[str, Any]) -> dict[str, Any]:
    """Every named type (record, enum) defined anywhere in ``schema``, by full name."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum") and "name" in schema:
            found[schema["name"]] = schema
        for field in schema.get("fields", ()):
            _named_types(field["type"], found)
        for key in ("items", "values"):
            if key in schema:
                _named_types(schema[key], found)
    return found


NAMED_TYPES: Final[dict[str, Any]] = _named_types(EVENT_SCHEMA, {})


def payload_schema(event_type: str) -> Any:
    """The record schema of one event type's payload (``rating`` -> learnloop.Rating)."""
    field = next(f for f in EVENT_SCHEMA["fields"] if f["name"] == event_type)
    branch = field["type"][1]
    return NAMED_TYPES[branch] if isinstance(branch, str) else branch


EVENT_CANONICAL: Final[str] = to_parsing_canonical_form(EVENT_SCHEMA)


def reader_schema_without_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` that reads timestamps as plain epoch milliseconds.

    fastavro turns ``timestamp-millis`` into ``datetime`` objects, which costs a
    third of decode time; the pipeline only needs the integer.
    """

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return parse_schema(strip(schema), _write_hint=False, _force=True)
