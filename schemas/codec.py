"""Reads and writes events on the wire; the decoder detects which encoding it got.

Encodings:
- Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint of the writer
  schema + body): needs no registry, and the fingerprint lets a reader on a newer
  schema version resolve events written with any schema in ``avro/history``.
- JSON: the flat form of the brief (``{"event_id":..., "type": "rating", "value": 1}``).
- The Confluent wire format (``00`` + 4-byte schema id + body): read when the codec
  has a schema registry client (the writer schema is fetched by id, once), and
  written instead of the single-object form when the codec is given a registry
  and a subject. Without a registry it is rejected as ``confluent_unsupported``.
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
from fastavro.read import SchemaResolutionError
from fastavro.schema import (
    SchemaParseException,
    fingerprint,
    load_schema,
    parse_schema,
    to_parsing_canonical_form,
)

from schemas.events import EventRecord
from schemas.registry import (
    CONFLUENT_HEADER_SIZE,
    RegistryError,
    SchemaRegistryClient,
    confluent_header,
)
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

    def __init__(
        self,
        limits: Limits = Limits(),
        history_dir: Path = HISTORY_DIR,
        *,
        registry: SchemaRegistryClient | None = None,
        subject: str | None = None,
    ) -> None:
        """``registry`` lets the codec read the Confluent wire format; with ``subject``
        too (``<topic>-value``), Avro is written in that format under that subject."""
        self.limits = limits
        self.registry = registry
        self.subject = subject
        self._confluent_id: int | None = None
        # schema id -> writer schema, for Confluent-framed events already seen
        self._confluent_writers: dict[int, Any] = {}
        self._writer_schema = EVENT_SCHEMA
        self._reader_schema = _fast_schema(EVENT_SCHEMA)
        self._fingerprint = crc64_fingerprint(EVENT_SCHEMA)
        # fingerprint -> writer schema of every version we promise to read
        self._writers: dict[bytes, Any] = {self._fingerprint: self._reader_schema}
        for path in sorted(history_dir.glob("*.avsc")):
            old = load_schema(str(path), _write_hint=False)
            self._writers.setdefault(crc64_fingerprint(old), _fast_schema(old))

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    @property
    def canonical_schema(self) -> str:
        return EVENT_CANONICAL

    def encode(self, record: EventRecord, wire: WireFormat = WireFormat.AVRO) -> bytes:
        """Encode a validated record; raises ``DecodeError`` if it is not valid.

        Avro is single-object encoded, or Confluent-framed when the codec has a
        registry and a subject (the first such call registers the schema and may
        raise ``RegistryError``).
        """
        errors = validate_record(record, self.limits)
        if errors:
            raise DecodeError("invalid_event", "; ".join(f"{f}: {r}" for f, r in errors), errors)
        if wire is WireFormat.JSON:
            return orjson.dumps(to_json_event(record))
        buffer = io.BytesIO()
        if self.registry is not None and self.subject is not None:
            buffer.write(confluent_header(self._registered_id()))
        else:
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
            if len(data) < 10:
                raise DecodeError("truncated", "single-object header is shorter than 10 bytes")
            writer = self._writers.get(data[2:10])
            if writer is None:
                unknown = data[2:10].hex()
                raise DecodeError("unknown_fingerprint", f"writer schema {unknown} unknown")
            return self._read_body(data, 10, writer)
        if data[0] == CONFLUENT_MAGIC and len(data) >= CONFLUENT_HEADER_SIZE:
            return self._decode_confluent(data)
        stripped = data.lstrip()
        if stripped[:1] == b"{":
            return self._decode_json(data)
        raise DecodeError("unknown_encoding", f"first bytes {data[:4].hex()} match no encoding")

    def _read_body(self, data: bytes, start: int, writer: Any) -> EventRecord:
        """Read the Avro body at ``data[start:]`` written with ``writer``, then validate."""
        body = io.BytesIO(data)
        body.seek(start)
        try:
            if writer is self._reader_schema:
                record = schemaless_reader(body, writer, None)
            else:
                record = schemaless_reader(body, writer, self._reader_schema)
        except SchemaResolutionError as exc:
            raise DecodeError("incompatible_schema", str(exc)[:200]) from None
        except (EOFError, StopIteration, IndexError, ValueError, UnicodeDecodeError) as exc:
            raise DecodeError("corrupt_avro", type(exc).__name__) from None
        if body.tell() != len(data):
            raise DecodeError("corrupt_avro", f"{len(data) - body.tell()} trailing bytes")
        errors = validate_record(cast(Mapping[str, Any], record), self.limits, typed=True)
        if errors:
            raise DecodeError("invalid_event", _summary(errors), errors)
        return cast(EventRecord, record)

    def _decode_confluent(self, data: bytes) -> EventRecord:
        if self.registry is None:
            raise DecodeError(
                "confluent_unsupported",
                "Confluent wire format needs a schema registry, which is not configured",
            )
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
        writer = self._confluent_writers.get(schema_id)
        if writer is None:
            writer = self._confluent_writer(schema_id)
        return self._read_body(data, CONFLUENT_HEADER_SIZE, writer)

    def _confluent_writer(self, schema_id: int) -> Any:
        """Fetch, parse and remember the writer schema of a Confluent schema id."""
        assert self.registry is not None
        try:
            text = self.registry.get_schema(schema_id)
        except RegistryError as exc:
            if exc.not_found:
                raise DecodeError("unknown_schema_id", f"schema id {schema_id}: {exc}") from None
            raise DecodeError("registry_unavailable", str(exc)[:200]) from None
        try:
            parsed = json.loads(text)
            writer = self._writers.get(crc64_fingerprint(parsed))
            if writer is None:  # not a version we ship: resolve it against ours
                writer = _fast_schema(parsed)
        except (ValueError, TypeError, KeyError, AttributeError, SchemaParseException) as exc:
            raise DecodeError(
                "invalid_writer_schema", f"schema id {schema_id}: {type(exc).__name__}"
            ) from None
        self._confluent_writers[schema_id] = writer
        return writer

    def _registered_id(self) -> int:
        """The registry's id of the current schema under ``subject`` (registered once)."""
        if self._confluent_id is None:
            assert self.registry is not None
            assert self.subject is not None
            self._confluent_id = self.registry.register(self.subject, schema_json())
        return self._confluent_id

    def _decode_json(self, data: bytes) -> EventRecord:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("malformed_json", str(exc)[:200]) from None
        record, errors = from_json_event(parsed, self.limits)
        if record is None:
            raise DecodeError("invalid_event", _summary(errors), errors)
        return record


def _fast_schema(schema: Any) -> Any:
    """``schema`` without logical types, parsed once *with* fastavro's parsed marker.

    ``schemaless_reader`` re-parses any schema that lacks the ``__fastavro_parsed``
    marker on every call; keeping the marker makes Avro decode about 4x faster.
    """
    return parse_schema(reader_schema_without_logical_types(schema))


def _summary(errors: list[FieldError]) -> str:
    return "; ".join(f"{field or '(event)'}: {reason}" for field, reason in errors)[:500]


def schema_json() -> str:
    """The current Event schema as JSON, for producers in other languages."""
    return json.dumps(parse_schema(EVENT_SCHEMA, _write_hint=False))
