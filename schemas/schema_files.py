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
