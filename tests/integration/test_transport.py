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


async def _batches(bootstrap: str, topic: str, sizes: list[int]) -> list[tuple[int, int, int]]:
    """(true end, reported end, measured end) after each batch of ``sizes`` records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, enable_idempotence=False)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    part = TopicPartition(topic, 0)
    seen: list[tuple[int, int, int]] = []
    try:
        total = 0
        for size in sizes:
            futures = [await producer.send(topic, b"y" * 100, partition=0) for _ in range(size)]
            await asyncio.gather(*futures)
            total += size
            reported = (await consumer.end_offsets([part]))[part]
            measured = (await true_end_offsets([bootstrap], {TP(topic, 0): reported}))[TP(topic, 0)]
            seen.append((total, reported, measured))
    finally:
        await producer.stop()
        await consumer.stop()
    return seen


def test_the_last_batch_gives_the_true_end_whatever_came_before(broker) -> None:
    """Tansu reports the last batch's base offset + 1; one fetch from there finds the end."""
    topic = f"hwm-{uuid.uuid4().hex[:8]}"
    seen = asyncio.run(_batches(broker.bootstrap, topic, [7, 300, 1, 45]))
    assert [measured for _, _, measured in seen] == [total for total, _, _ in seen]
    assert any(reported < total for total, reported, _ in seen)  # the bug is still there


def test_an_empty_partition_ends_at_zero_without_a_fetch(broker) -> None:
    ends = asyncio.run(true_end_offsets([broker.bootstrap], {TP("never-written", 0): 0}))
    assert ends == {TP("never-written", 0): 0}
