"""Reads and writes events on the wire; the decoder detects which encoding it got.

Encodings:
- Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint of the writer
  schema + body): needs no registry, and the fingerprint lets a reader on a newer
  schema version resolve events written with any schema in ``avro/history``.
- JSON: the flat form of the brief (``{"event_id":..., "type": "rating", "value": 1}``).
- The Confluent wire format (``00`` + schema id) is recognised so that it can be
  rejected with a clear reason; reading it needs a schema registry client.
"""

from __future__ import annotations

import enum
import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

import orjson
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, parse_schema, to_parsing_canonical_form

from schemas.events import EventRecord
from schemas.schema_files import (
    EVENT_CANONICAL,
    EVENT_SCHEMA,
    HISTORY_DIR,
    reader_schema_without_logical_types,
)
from schemas.validate import FieldError, Limits, from_json_event, to_json_event, validate_record

SINGLE_OBJECT_MAGIC: Final[bytes] = b"\xc3\x01"
CONFLUENT_MAGIC: Final[int] = 0


class WireFormat(enum.StrEnum):
    """Encodings a producer may choose."""

    AVRO = "avro"
    JSON = "json"


class DecodeError(ValueError):
    """Bytes that are not a valid event; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str, errors: list[FieldError] | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.errors = errors or []
        super().__init__(f"{reason}: {detail}")


def crc64_fingerprint(schema: Any) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's canonical form."""
    value = int(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16)
    return struct.pack("<Q", value)


class EventCodec:
    """Encodes and decodes ``learnloop.Event`` records; one instance per process."""

    def __init__(self, limits: Limits = Limits(), history_dir: Path = HISTORY_DIR) -> None:
        self.limits = limits
        self._writer_schema = EVENT_SCHEMA
        self._reader_schema = reader_schema_without_logical_types(EVENT_SCHEMA)
        self._fingerprint = crc64_fingerprint(EVENT_SCHEMA)
        # fingerprint -> writer schema of every version we promise to read
        self._writers: dict[bytes, Any] = {self._fingerprint: self._reader_schema}
        for path in sorted(history_dir.glob("*.avsc")):
            old = load_schema(str(path), _write_hint=False)
            self._writers.setdefault(
                crc64_fingerprint(old), reader_schema_without_logical_types(old)
            )

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    @property
    def canonical_schema(self) -> str:
        return EVENT_CANONICAL

    def encode(self, record: EventRecord, wire: WireFormat = WireFormat.AVRO) -> bytes:
        """Encode a validated record; raises ``DecodeError`` if it is not valid."""
        errors = validate_record(record, self.limits)
        if errors:
            raise DecodeError("invalid_event", "; ".join(f"{f}: {r}" for f, r in errors), errors)
        if wire is WireFormat.JSON:
            return orjson.dumps(to_json_event(record))
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MAGIC)
        buffer.write(self._fingerprint)
        schemaless_writer(buffer, self._writer_schema, cast(dict[str, Any], record))
        return buffer.getvalue()

    def decode(self, data: bytes | None) -> EventRecord:
        """Decode bytes of any supported encoding into a validated record."""
        if not data:
            raise DecodeError("empty", "message has no value")
        if len(data) > self.limits.max_event_bytes:
            raise DecodeError(
                "too_large", f"{len(data)} bytes, more than {self.limits.max_event_bytes}"
            )
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._decode_avro(data)
        if data[0] == CONFLUENT_MAGIC and len(data) >= 5:
            raise DecodeError(
                "confluent_unsupported",
                "Confluent wire format needs a schema registry, which is not configured",
            )
        stripped = data.lstrip()
        if stripped[:1] == b"{":
            return self._decode_json(data)
        raise DecodeError("unknown_encoding", f"first bytes {data[:4].hex()} match no encoding")

    def _decode_avro(self, data: bytes) -> EventRecord:
        if len(data) < 10:
            raise DecodeError("truncated", "single-object header is shorter than 10 bytes")
        schema = self._writers.get(data[2:10])
        if schema is None:
            raise DecodeError("unknown_fingerprint", f"writer schema {data[2:10].hex()} unknown")
        body = io.BytesIO(data)
        body.seek(10)
        try:
            if schema is self._reader_schema:
                record = schemaless_reader(body, schema, None)
            else:
                record = schemaless_reader(body, schema, self._reader_schema)
        except (EOFError, StopIteration, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise DecodeError("corrupt_avro", type(exc).__name__) from None
        if body.tell() != len(data):
            raise DecodeError("corrupt_avro", f"{len(data) - body.tell()} trailing bytes")
        errors = validate_record(cast(Mapping[str, Any], record), self.limits, typed=True)
        if errors:
            raise DecodeError("invalid_event", _summary(errors), errors)
        return cast(EventRecord, record)

    def _decode_json(self, data: bytes) -> EventRecord:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("malformed_json", str(exc)[:200]) from None
        record, errors = from_json_event(parsed, self.limits)
        if record is None:
            raise DecodeError("invalid_event", _summary(errors), errors)
        return record


def _summary(errors: list[FieldError]) -> str:
    return "; ".join(f"{field or '(event)'}: {reason}" for field, reason in errors)[:500]


def schema_json() -> str:
    """The current Event schema as JSON, for producers in other languages."""
    return json.dumps(parse_schema(EVENT_SCHEMA, _write_hint=False))
