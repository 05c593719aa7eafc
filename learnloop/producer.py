"""The Python producer client for services: validate, encode, send, confirm.

Invalid events raise :class:`~learnloop.errors.InvalidEvent` *before* anything
is sent, naming the field. Events are keyed by their interaction id, so
feedback lands on the same partition as the interaction it joins. The
idempotent producer is off because Tansu does not support it; duplicates from
retries are dropped downstream by event id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from learnloop.errors import BrokerError, InvalidEvent
from schemas import EventCodec, EventRecord, WireFormat, from_json_event


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker put an event."""

    event_id: str
    partition: int
    offset: int


class EventProducer:
    """Async producer of learnloop events (``async with EventProducer(...) as p``)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = "learnloop.events",
        *,
        codec: EventCodec | None = None,
        wire: WireFormat = WireFormat.AVRO,
        linger_ms: int = 5,
        timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.codec = codec or EventCodec()
        self.wire = wire
        self.timeout_s = timeout_s
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "linger_ms": linger_ms,
            "acks": 1,
            "enable_idempotence": False,
            "max_batch_size": 256 * 1024,
            "request_timeout_ms": int(timeout_s * 1000),
        }
        self._producer: AIOKafkaProducer | None = None
        self._started = False

    async def start(self) -> EventProducer:
        """Connect; aiokafka needs the running loop, so the client is made here."""
        self._producer = AIOKafkaProducer(**self._options)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._producer.start()
        except (TimeoutError, OSError, KafkaError) as exc:
            raise BrokerError(f"cannot reach the broker: {type(exc).__name__}") from None
        self._started = True
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            self._started = False
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> EventProducer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        return self._started

    def prepare(self, event: Mapping[str, Any]) -> tuple[bytes, bytes, str]:
        """Validate and encode one JSON-form event: ``(key, value, event_id)``."""
        record, errors = from_json_event(event, self.codec.limits)
        if record is None:
            raise InvalidEvent(errors)
        return self.encode_record(record)

    def encode_record(self, record: EventRecord) -> tuple[bytes, bytes, str]:
        key = (record["interaction_id"] or record["event_id"]).encode()
        return key, self.codec.encode(record, self.wire), record["event_id"]

    async def emit(self, event: Mapping[str, Any]) -> Delivery:
        """Send one event and wait until the broker confirms it."""
        return (await self.emit_many([event]))[0]

    async def emit_many(self, events: Iterable[Mapping[str, Any]]) -> list[Delivery]:
        """Validate all, then send all in batches; confirms every one or raises."""
        prepared = [self.prepare(event) for event in events]  # raises before sending
        return await self.send_prepared(prepared)

    async def send_raw(
        self, topic: str, key: bytes, value: bytes, partition: int | None = None
    ) -> Delivery:
        """Send one already-encoded record to another topic (memory commands, rewritten
        versions); ``partition`` overrides the key's (a rewrite goes where the original is)."""
        if self._producer is None or not self._started:
            raise BrokerError("the producer is not started")
        try:
            async with asyncio.timeout(self.timeout_s):
                meta = await (
                    await self._producer.send(topic, value=value, key=key, partition=partition)
                )
        except TimeoutError:
            raise BrokerError(f"broker did not confirm within {self.timeout_s} s") from None
        return Delivery(key.decode("utf-8", "replace"), meta.partition, meta.offset)

    async def send_prepared(self, prepared: list[tuple[bytes, bytes, str]]) -> list[Delivery]:
        """Send encoded events and wait for every confirmation."""
        if self._producer is None or not self._started:
            raise BrokerError("the producer is not started")
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = self._producer
                futures = [
                    await producer.send(self.topic, value=value, key=key)
                    for key, value, _ in prepared
                ]
                results = await asyncio.gather(*futures)
        except TimeoutError:
            raise BrokerError(f"broker did not confirm within {self.timeout_s} s") from None
        return [
            Delivery(event_id, meta.partition, meta.offset)
            for (_, _, event_id), meta in zip(prepared, results, strict=True)
        ]
