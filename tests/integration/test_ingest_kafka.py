"""Malformed input through Kafka: dead-lettered with a reason, and nothing valid is lost.

One worker serves the whole module (a worker start costs seconds). Every bad
message is sent between valid events, as raw bytes with a plain aiokafka
producer, so nothing on the way validates or fixes it; the worker must send each
to the dead-letter topic with its reason and source, keep going, and count every
valid event sent alongside.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastavro import schemaless_writer

from learnloop.embedded.broker import EmbeddedBroker
from schemas import EventCodec, WireFormat, from_json_event
from schemas.codec import SINGLE_OBJECT_MAGIC
from schemas.registry import (
    confluent_header,
    is_confluent_framed,
    parse_confluent_header,
    subject_for_topic,
)
from schemas.schema_files import EVENT_SCHEMA
from tests.conftest import WorkerProcess, read_group_states, unique_env, wait_until
from tests.factories import feedback, interaction
from tests.integration.streams_helpers import actual_counts, expected_counts

pytestmark = pytest.mark.integration
CODEC = EventCodec()
#: larger than any event we send, so the producer never refuses one (the broker decides)
MAX_REQUEST_BYTES = 16 * 1024 * 1024
TEN_MB = 10 * 1024 * 1024


# --------------------------------------------------------------------------- helpers
# (also used by test_kcat.py)


def module_env(broker: EmbeddedBroker, data_dir: Path) -> dict[str, str]:
    """LEARNLOOP_* variables for one module's worker: its own topics and app id."""
    return unique_env(broker, data_dir)


def create_topics(env: dict[str, str]) -> None:
    """The events and dead-letter topics, before the worker or any producer needs them."""

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=env["LEARNLOOP_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(env["LEARNLOOP_TOPICS__EVENTS"], int(env["LEARNLOOP_PARTITIONS"]), 1),
                    NewTopic(env["LEARNLOOP_TOPICS__DEAD_LETTERS"], 1, 1),
                ]
            )
        finally:
            await admin.close()

    asyncio.run(run())


def start_module_worker(env: dict[str, str], log: Path) -> WorkerProcess:
    create_topics(env)
    worker = WorkerProcess(env, log).start()
    try:
        worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    return worker


def metric_values(worker: WorkerProcess, name: str) -> dict[str, float]:
    """A counter's samples by their label text, e.g. ``{'reason="empty"': 2.0}``."""
    text = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            out[labels] = float(value)
    return out


@dataclass(frozen=True)
class Sent:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


def produce(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> list[Sent]:
    """Send raw (key, value) messages in order, each confirmed; where the broker put them."""

    async def run() -> list[Sent]:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks=1,
            enable_idempotence=False,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=30_000,
        )
        await producer.start()
        try:
            out = []
            for key, value in messages:
                meta = await producer.send_and_wait(topic, value=value, key=key)
                out.append(Sent(key, value, meta.partition, meta.offset))
            return out
        finally:
            await producer.stop()

    return asyncio.run(run())


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def reason(self) -> str:
        return self.headers["learnloop.reason"].decode()

    @property
    def source(self) -> str:
        return self.headers["learnloop.source"].decode()

    @property
    def error_fields(self) -> list[str]:
        raw = self.headers.get("learnloop.errors")
        return [field for field, _ in orjson.loads(raw)] if raw else []


def read_dead_letters(env: dict[str, str]) -> list[DeadLetter]:
    """Everything on the dead-letter topic so far (it has one partition)."""

    async def run() -> list[DeadLetter]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=env["LEARNLOOP_KAFKA_BOOTSTRAP"],
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=MAX_REQUEST_BYTES,
            fetch_max_bytes=4 * MAX_REQUEST_BYTES,
        )
        await consumer.start()
        try:
            part = TopicPartition(env["LEARNLOOP_TOPICS__DEAD_LETTERS"], 0)
            consumer.assign([part])
            await consumer.seek_to_beginning(part)
            out: list[DeadLetter] = []
            empty = 0
            while empty < 3:
                batch = await consumer.getmany(timeout_ms=200)
                if not any(batch.values()):
                    empty += 1
                    continue
                empty = 0
                out.extend(
                    DeadLetter(r.key, r.value, {k: bytes(v) for k, v in r.headers})
                    for records in batch.values()
                    for r in records
                )
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


def dead_letters_by_source(env: dict[str, str], wanted: int, timeout_s: float) -> dict[str, Any]:
    """Wait until at least ``wanted`` dead letters exist; index them by source header."""
    letters = wait_until(
        lambda: (found := read_dead_letters(env)) and len(found) >= wanted and found,
        timeout_s,
    )
    return {letter.source: letter for letter in letters}


def wait_counts(env: dict[str, str], expected: dict[str, Counter[str]], timeout_s: float) -> None:
    """Wait until every group of ``expected`` has exactly its counts (global excluded:
    it is shared by every test of the worker)."""
    wanted = {g: dict(c) for g, c in expected.items() if g != "global"}
    last: dict[str, Any] = {}

    def check() -> bool:
        actual = actual_counts(read_group_states(env))
        last.clear()
        last.update(
            {
                g: {"expected": want, "actual": dict(actual.get(g, {}))}
                for g, want in wanted.items()
                if dict(actual.get(g, {})) != want
            }
        )
        return not last

    try:
        wait_until(check, timeout_s)
    except AssertionError:
        raise AssertionError(f"group counts differ: {last}") from None


def key_of(event: dict[str, Any]) -> bytes:
    return str(event.get("interaction_id") or event["event_id"]).encode()


def encode(event: dict[str, Any], wire: WireFormat = WireFormat.AVRO) -> bytes:
    record, errors = from_json_event(event)
    assert record is not None, errors
    return CODEC.encode(record, wire)


def avro_unchecked(record: dict[str, Any]) -> bytes:
    """Single-object Avro of a record the codec would refuse to encode (no validation)."""
    buffer = io.BytesIO()
    buffer.write(SINGLE_OBJECT_MAGIC + CODEC.fingerprint)
    schemaless_writer(buffer, EVENT_SCHEMA, record)
    return buffer.getvalue()


def valid_events(tag: str, n: int) -> list[dict[str, Any]]:
    """``n`` interactions, each with a rating and an explanation, for team ``tag``."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        user, iid = f"{tag}-u{i % 3}", f"{tag}-i{i}"
        events.append(interaction(iid, user=user, team=tag, org=f"{tag}-org"))
        events.append(feedback(f"{tag}-r{i}", "rating", iid, user=user, team=tag, org=None))
        events.append(feedback(f"{tag}-x{i}", "explanation", iid, user=user, team=tag, org=None))
    return events


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes | None
    reason: str
    field: str | None = None  # a field that the learnloop.errors header must name


def _json(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def malformed_cases() -> list[Case]:
    good = encode(feedback("m-x", "explanation", "m-i"))
    rating = from_json_event(feedback("m-r", "rating", "m-i"))[0]
    assert rating is not None
    type_at = 10 + 1 + len(b"m-x")  # header, then event_id (length byte + bytes), then type
    assert good[type_at] == 2 * 2  # zig-zag of enum index 2: explanation
    user_at = good.index(b"alice")
    deep: dict[str, Any] = {"leaf": "x"}
    for _ in range(60):
        deep = {"a": deep}
    base = feedback("m-j", "rating", "m-i")
    return [
        Case("truncated avro", good[: len(good) // 2], "corrupt_avro"),
        Case("truncated single-object header", good[:6], "truncated"),
        Case("avro with trailing bytes", good + b"\x00\x00", "corrupt_avro"),
        Case(
            "wrong fingerprint",
            good[:2] + bytes(b ^ 0xFF for b in good[2:10]) + good[10:],
            "unknown_fingerprint",
        ),
        Case(
            "unknown type (avro enum index)",
            good[:type_at] + b"\x7e" + good[type_at + 1 :],
            "corrupt_avro",
        ),
        Case("unknown type (json)", _json({**base, "type": "telemetry"}), "invalid_event", "type"),
        Case(
            "missing required field (json)",
            _json({k: v for k, v in base.items() if k != "user_id"}),
            "invalid_event",
            "user_id",
        ),
        Case(
            "missing payload (avro)",
            avro_unchecked({**rating, "rating": None}),
            "invalid_event",
            "rating",
        ),
        Case("wrong type (json)", _json({**base, "value": "up"}), "invalid_event", "value"),
        Case(
            "wrong type for timestamp (json)",
            _json({**base, "timestamp": [2026]}),
            "invalid_event",
            "timestamp",
        ),
        Case(
            "out-of-range rating (avro)",
            avro_unchecked({**rating, "rating": {"value": 3, "score": None, "scale": None}}),
            "invalid_event",
            "value",
        ),
        Case(
            "invalid utf-8 (json)",
            _json(base).replace(b'"alice"', b'"\xff\xfe\xfd"'),
            "malformed_json",
        ),
        Case(
            "invalid utf-8 (avro)",
            good[:user_at] + b"\xff\xfe\xfd\xfc\xfb" + good[user_at + 5 :],
            "corrupt_avro",
        ),
        Case(
            "huge declared string length (avro)",
            good[:10] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + good[11:],
            "corrupt_avro",
        ),
        Case(
            "text over the character limit (json)",
            _json({**feedback("m-long", "explanation", "m-i"), "text": "y" * 100_000}),
            "invalid_event",
            "text",
        ),
        Case(
            "deeply nested metadata",
            _json({**base, "metadata": deep}),
            "invalid_event",
            "metadata.a",
        ),
        Case("nesting deeper than the JSON parser allows", b'{"a":' * 5000, "malformed_json"),
        Case("empty value", b"", "empty"),
        Case("null value (tombstone)", None, "empty"),
        Case("confluent-framed avro", confluent_header(7) + good[10:], "confluent_unsupported"),
        Case("garbage bytes", bytes(range(0x80, 0xC0)) * 4, "unknown_encoding"),
        Case("a JSON array instead of one event", _json([base, base]), "unknown_encoding"),
    ]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return module_env(broker, tmp_path_factory.mktemp("ingest-kafka"))


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    process = start_module_worker(env, Path(env["LEARNLOOP_DATA_DIR"]) / "worker.log")
    yield process
    process.stop()


# --------------------------------------------------------------------------- tests


def test_malformed_messages_are_dead_lettered_and_valid_ones_all_counted(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    cases = malformed_cases()
    valid = valid_events("kafka-bad", 2 * len(cases))
    before = metric_values(worker, "learnloop_dead_letters_total")
    # interleave: each bad message sits between valid events of both encodings
    messages: list[tuple[bytes | None, bytes | None]] = []
    kinds: list[Case | None] = []
    feed = iter(valid)
    for index, case in enumerate(cases):
        for _ in range(len(valid) // len(cases)):
            event = next(feed)
            wire = WireFormat.JSON if index % 2 else WireFormat.AVRO
            messages.append((key_of(event), encode(event, wire)))
            kinds.append(None)
        messages.append((f"bad-{index}".encode(), case.value))
        kinds.append(case)
    for event in feed:
        messages.append((key_of(event), encode(event)))
        kinds.append(None)
    sent = produce(env["LEARNLOOP_KAFKA_BOOTSTRAP"], env["LEARNLOOP_TOPICS__EVENTS"], messages)

    topic = env["LEARNLOOP_TOPICS__EVENTS"]
    letters = dead_letters_by_source(env, len(cases), 90)
    problems = []
    for where, case in zip(sent, kinds, strict=True):
        if case is None:
            continue
        source = f"{topic}/{where.partition}/{where.offset}"
        letter = letters.get(source)
        if letter is None:
            problems.append(f"{case.name}: no dead letter from {source}")
            continue
        if letter.reason != case.reason:
            problems.append(f"{case.name}: reason {letter.reason!r}, expected {case.reason!r}")
        if case.field is not None and case.field not in letter.error_fields:
            problems.append(f"{case.name}: errors name {letter.error_fields}, not {case.field}")
        if (letter.value or b"") != (case.value or b""):
            problems.append(f"{case.name}: the dead letter does not carry the original bytes")
        if case.reason == "too_large" and not (case.value or b"").startswith(letter.value or b"-"):
            problems.append(f"{case.name}: the dead letter does not start like the original")
        if letter.key != where.key:
            problems.append(f"{case.name}: key {letter.key!r}, expected {where.key!r}")
        stamp = int(letter.headers["learnloop.dead_lettered_ms"])
        if abs(stamp - time.time() * 1000) > 300_000:
            problems.append(f"{case.name}: dead_lettered_ms {stamp} is not now")
        if not letter.headers.get("learnloop.detail"):
            problems.append(f"{case.name}: no learnloop.detail header")
    assert not problems, "\n".join(problems)
    assert len(letters) == len(cases), "valid events were dead-lettered too"

    # every valid event sent alongside was counted, exactly once
    wait_counts(env, expected_counts(valid), 60)
    assert worker.process is not None
    assert worker.process.poll() is None, "the worker died"

    after = metric_values(worker, "learnloop_dead_letters_total")
    by_reason = Counter(case.reason for case in cases)
    counted = {
        reason: after.get(f'reason="{reason}"', 0.0) - before.get(f'reason="{reason}"', 0.0)
        for reason in set(by_reason) | {k.split('"')[1] for k in after}
    }
    assert counted == {reason: float(by_reason.get(reason, 0)) for reason in counted}


def test_a_worker_still_takes_valid_events_after_the_bad_ones(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    """The worker keeps going: a later stream is processed without a restart."""
    events = valid_events("kafka-after", 5)
    produce(
        env["LEARNLOOP_KAFKA_BOOTSTRAP"],
        env["LEARNLOOP_TOPICS__EVENTS"],
        [(key_of(e), encode(e)) for e in events],
    )
    wait_counts(env, expected_counts(events), 60)


def test_duplicates_resent_by_a_producer_have_no_effect(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    events = valid_events("kafka-dup", 10)
    bootstrap, topic = env["LEARNLOOP_KAFKA_BOOTSTRAP"], env["LEARNLOOP_TOPICS__EVENTS"]
    produce(bootstrap, topic, [(key_of(e), encode(e)) for e in events])
    expected = expected_counts(events)
    wait_counts(env, expected, 60)
    duplicates = worker.metric("learnloop_duplicates_total")
    # a retrying producer sends everything again, some of it in the other encoding
    produce(
        bootstrap,
        topic,
        [
            (key_of(e), encode(e, WireFormat.JSON if i % 2 else WireFormat.AVRO))
            for i, e in enumerate(events)
        ],
    )
    wait_until(lambda: worker.metric("learnloop_duplicates_total") >= duplicates + len(events), 60)
    wait_counts(env, expected, 10)  # still exactly once


def test_confluent_framing_is_magic_zero_and_a_big_endian_id() -> None:
    """The pure framing of the Confluent wire format (no registry needed)."""
    assert confluent_header(1) == b"\x00\x00\x00\x00\x01"
    assert confluent_header(0x01020304) == b"\x00\x01\x02\x03\x04"
    framed = confluent_header(258) + b"body"
    assert is_confluent_framed(framed)
    assert parse_confluent_header(framed) == 258
    assert not is_confluent_framed(b"\x00\x00\x01")
    assert not is_confluent_framed(SINGLE_OBJECT_MAGIC + b"\x00" * 8)
    for bad in (b"\x00\x00", b"\x01\x00\x00\x00\x01", b"\x00\xff\xff\xff\xff"):
        with pytest.raises(ValueError):  # noqa: PT011 - the message is what we check below
            parse_confluent_header(bad)
    with pytest.raises(ValueError, match="outside"):
        confluent_header(-1)
    with pytest.raises(ValueError, match="outside"):
        confluent_header(2**31)
    assert subject_for_topic("learnloop.events") == "learnloop.events-value"


def test_a_ten_megabyte_message_is_dead_lettered_and_the_worker_goes_on(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    """Last in the module: before the dead-letter fix it wedged the join agent.

    The broker (Tansu) and a producer allowing it take a 10 MB message (checked
    here: ``produce`` confirms it). The codec refuses it as ``too_large``; the
    dead letter may carry the whole value or a prefix of it, but it must be
    sent, and the valid events around it must still be counted.
    """
    before = metric_values(worker, "learnloop_dead_letters_total").get('reason="too_large"', 0.0)
    huge = _json({**feedback("big-x", "explanation", "big-i"), "text": "x" * TEN_MB})
    assert len(huge) > TEN_MB
    events = valid_events("kafka-big", 4)
    messages: list[tuple[bytes | None, bytes | None]] = [(key_of(e), encode(e)) for e in events]
    messages.insert(len(messages) // 2, (b"big-i", huge))
    sent = produce(env["LEARNLOOP_KAFKA_BOOTSTRAP"], env["LEARNLOOP_TOPICS__EVENTS"], messages)
    where = next(s for s in sent if s.value is huge)
    source = f"{env['LEARNLOOP_TOPICS__EVENTS']}/{where.partition}/{where.offset}"

    def dead_lettered() -> DeadLetter | None:
        return next((d for d in read_dead_letters(env) if d.source == source), None)

    try:
        letter = wait_until(dead_lettered, 30)
    except AssertionError:
        log = Path(env["LEARNLOOP_DATA_DIR"]) / "worker.log"
        stuck = [line for line in log.read_text().splitlines() if "send failed" in line]
        raise AssertionError(
            f"no dead letter for the 10 MB message from {source}; the worker's last send "
            f"failures: {stuck[-2:]}"
        ) from None
    assert letter.reason == "too_large"
    assert letter.value and huge.startswith(letter.value)
    wait_counts(env, expected_counts(events), 30)
    after = metric_values(worker, "learnloop_dead_letters_total").get('reason="too_large"', 0.0)
    assert after == before + 1
