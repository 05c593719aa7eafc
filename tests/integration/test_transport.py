"""The embedded broker's high-watermark bug, re-measured, and our correction of it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from streams.transport import true_end_offsets

pytestmark = pytest.mark.integration


async def _produce_and_measure(bootstrap: str, topic: str, n: int) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, enable_idempotence=False)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x" * 100, partition=0) for _ in range(n)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        reported = (await consumer.end_offsets([TopicPartition(topic, 0)]))[
            TopicPartition(topic, 0)
        ]
    finally:
        await consumer.stop()
    measured = await true_end_offsets([bootstrap], {TP(topic, 0): reported})
    return reported, measured[TP(topic, 0)]


def test_true_end_offsets_count_records_not_batches(broker) -> None:
    topic = f"hwm-{uuid.uuid4().hex[:8]}"
    reported, measured = asyncio.run(_produce_and_measure(broker.bootstrap, topic, 1000))
    assert measured == 1000
    # Tansu as bundled under-reports with batched produce; if this starts failing,
    # the broker was fixed: note it on the issue and consider dropping the transport.
    assert reported < 1000
