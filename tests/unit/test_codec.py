"""The wire contract: encodings round-trip, bad bytes are rejected with a reason."""

from __future__ import annotations

import json
import struct

import pytest
from fastavro.schema import load_schema

from schemas import DecodeError, EventCodec, WireFormat, from_json_event, to_json_event
from schemas.codec import SINGLE_OBJECT_MAGIC, crc64_fingerprint
from schemas.schema_files import AVRO_DIR, HISTORY_DIR
from tests.factories import feedback, interaction

CODEC = EventCodec()


def _record(event: dict) -> dict:
    record, errors = from_json_event(event)
    assert errors == []
    assert record is not None
    return record


@pytest.mark.parametrize("wire", list(WireFormat))
def test_round_trip_every_type(wire: WireFormat) -> None:
    events = [
        interaction(
            "i1",
            tool_calls=[
                {"name": "search", "arguments": "{}", "status": "timeout", "latency_ms": 12.5}
            ],
            metadata={"path": "a/b"},
        ),
        feedback("r1", "rating", "i1"),
        feedback("r2", "rating", "i1", value=None, score=4, scale=5),
        feedback("x1", "explanation", "i1"),
        feedback("e1", "edit", "i1"),
        feedback("g1", "engagement", "i1", kind="dwell_ms", value=1500),
        {
            "event_id": "t1",
            "type": "tool_call",
            "timestamp": "2026-11-25T08:00:00Z",
            "user_id": "bob",
            "name": "search",
            "arguments": '{"q": 1}',
            "status": "error",
            "error": "HTTP 500",
        },
    ]
    for event in events:
        event = {k: v for k, v in event.items() if v is not None}
        record = _record(event)
        decoded = CODEC.decode(CODEC.encode(record, wire))
        assert to_json_event(decoded) == to_json_event(record)


def test_avro_is_single_object_encoded_with_fingerprint() -> None:
    data = CODEC.encode(_record(feedback("r1", "rating", "i1")))
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == crc64_fingerprint(load_schema(str(AVRO_DIR / "learnloop.Event.avsc")))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\xc3\x01\x00", "truncated"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02ab", "unknown_fingerprint"),
        (b"\x00\x00\x00\x00\x07abc", "confluent_unsupported"),
        (b"\xff\xfe garbage", "unknown_encoding"),
        (b"{not json", "malformed_json"),
        (b'{"event_id": "x", "type": "nope"}', "invalid_event"),
        (b"x" * 2_000_000, "too_large"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(data)
    assert caught.value.reason == reason


def test_truncated_avro_body_is_corrupt() -> None:
    data = CODEC.encode(_record(feedback("x1", "explanation", "i1")))
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError) as caught:
            CODEC.decode(data[:cut])
        assert caught.value.reason in ("corrupt_avro", "invalid_event")


def test_invalid_utf8_in_json_is_rejected() -> None:
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(b'{"event_id": "\xff\xfe", "type": "rating"}')
    assert caught.value.reason == "malformed_json"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**feedback("r", "rating", "i1"), "value": 3}, "value"),
        ({**feedback("r", "rating", "i1"), "value": "up"}, "value"),
        ({**feedback("r", "rating", "i1", value=None, score=9, scale=5)}, "score"),
        ({k: v for k, v in feedback("r", "rating", "i1").items() if k != "user_id"}, "user_id"),
        ({**feedback("r", "rating", "i1"), "interaction_id": None}, "interaction_id"),
        ({**feedback("r", "rating", "i1"), "timestamp": "yesterday"}, "timestamp"),
        ({**feedback("r", "rating", "i1"), "timestamp": "2026-11-25T08:00:00"}, "timestamp"),
        ({**feedback("r", "rating", "i1"), "metadata": {"a": {"deep": {"er": 1}}}}, "metadata.a"),
        ({**feedback("x", "explanation", "i1"), "text": "x" * 100_000}, "text"),
        ({**feedback("r", "rating", "i1"), "colour": "red"}, "colour"),
        (
            {**interaction("i"), "tool_calls": [{"name": "t", "status": "maybe"}]},
            "tool_calls[0].status",
        ),
        ({**feedback("r", "rating", "i1"), "event_id": " "}, "event_id"),
    ],
)
def test_invalid_events_name_the_field(event: dict, field: str) -> None:
    record, errors = from_json_event({k: v for k, v in event.items()})
    assert record is None
    assert field in [f for f, _ in errors], errors


def test_history_schemas_are_readable_by_the_current_one() -> None:
    """Backward compatibility: events written with any released schema still decode."""
    histories = sorted(HISTORY_DIR.glob("*.avsc"))
    assert histories, "the released schema must be kept in avro/history"
    import io

    from fastavro import schemaless_writer

    for path in histories:
        old = load_schema(str(path))
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MAGIC + crc64_fingerprint(old))
        record = _record(feedback("r1", "rating", "i1"))
        schemaless_writer(buffer, old, record)
        assert CODEC.decode(buffer.getvalue())["event_id"] == "r1"


def test_next_schema_version_reads_events_of_the_current_one(tmp_path) -> None:
    """A reader on v2 (a new optional field) resolves bytes written with v1."""
    v2 = json.loads((HISTORY_DIR / "learnloop.Event.v1.avsc").read_text())
    v2["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    import io

    from fastavro import parse_schema, schemaless_reader

    data = CODEC.encode(_record(feedback("r1", "rating", "i1")))
    body = io.BytesIO(data[10:])
    writer = load_schema(str(HISTORY_DIR / "learnloop.Event.v1.avsc"))
    assert data[2:10] == crc64_fingerprint(writer)
    decoded = schemaless_reader(body, writer, parse_schema(v2))
    assert decoded["session_id"] is None
    assert decoded["event_id"] == "r1"


def test_incompatible_change_is_detected() -> None:
    """Removing a field's default breaks old writers; resolution must fail loudly."""
    import io

    from fastavro import parse_schema, schemaless_reader

    broken = json.loads((HISTORY_DIR / "learnloop.Event.v1.avsc").read_text())
    broken["fields"].append({"name": "required_new", "type": "string"})
    data = CODEC.encode(_record(feedback("r1", "rating", "i1")))
    writer = load_schema(str(HISTORY_DIR / "learnloop.Event.v1.avsc"))
    with pytest.raises(Exception):  # noqa: B017, PT011 - fastavro raises SchemaResolutionError
        schemaless_reader(io.BytesIO(data[10:]), writer, parse_schema(broken))


def test_fingerprint_is_little_endian_crc64() -> None:
    value = struct.unpack("<Q", CODEC.fingerprint)[0]
    assert value != 0


def test_avro_events_obey_the_size_limits_too() -> None:
    """Avro needs no type checks, but a 100k-character text is still too long."""
    import io

    from fastavro import schemaless_writer

    record = _record(feedback("x1", "explanation", "i1"))
    record["explanation"]["text"] = "x" * 100_000
    buffer = io.BytesIO()
    buffer.write(SINGLE_OBJECT_MAGIC + CODEC.fingerprint)
    schemaless_writer(buffer, load_schema(str(AVRO_DIR / "learnloop.Event.avsc")), record)
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(buffer.getvalue())
    assert caught.value.reason == "invalid_event"
    assert caught.value.errors[0][0] == "text"
