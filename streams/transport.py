"""An aiokafka transport that measures true end offsets (``tansu://`` URLs).

Faust decides that a table's changelog recovery is done when it reaches the
partition's high watermark. Tansu, the embedded broker, answers ListOffsets
(latest) with the base offset of the partition's last record *batch* plus one,
not the offset after its last record, so recovery stopped early and a restarted
worker lost table updates. Fetching returns every record with its correct
offset, so this transport fetches that last batch before it answers, and
recovery is exact. It costs one extra fetch per changelog partition per
recovery, nothing in steady state. Against a real Kafka cluster use ``kafka://``
and none of this runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiokafka
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.consumer import WorkerConsumer

_POLL_TIMEOUT_MS = 150
log = structlog.get_logger(__name__)


async def true_end_offsets(
    bootstrap: list[str], reported: Mapping[TP, int], timeout_s: float = 30.0
) -> dict[TP, int]:
    """The real end of each partition, from Tansu's under-reported one.

    Tansu reports the base offset of a partition's last record batch plus one, so
    one fetch from ``reported - 1`` returns that whole batch and its last record
    is the real end. Each partition with data waits for that fetch (no guessing
    from empty polls, which a loaded machine can make slow), then one more short
    poll picks up anything written after it.
    """
    ends = {tp: int(offset) for tp, offset in reported.items()}
    waiting = {tp for tp, end in ends.items() if end > 0}
    if not waiting:
        return ends
    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [aiokafka.TopicPartition(tp.topic, tp.partition) for tp in waiting]
        consumer.assign(parts)
        for part in parts:
            consumer.seek(part, ends[TP(part.topic, part.partition)] - 1)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    batch = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
                    for part, records in batch.items():
                        key = TP(part.topic, part.partition)
                        ends[key] = max(ends[key], records[-1].offset + 1)
                        waiting.discard(key)
                    if not waiting and not any(batch.values()):
                        break
        except TimeoutError:
            log.warning(
                "could not read the last batch of some partitions; their end may be short",
                partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in waiting),
            )
    finally:
        await consumer.stop()
    return ends


class TrueEndOffsetsConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with high watermarks that count records, not batches."""

    async def _highwaters(self, partitions: Any) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        bootstrap = faust_aiokafka.server_list(self.transport.url, self.transport.default_port)
        return await true_end_offsets(bootstrap, reported)


class Consumer(WorkerConsumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return TrueEndOffsetsConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Registered as the ``tansu`` Faust transport (see pyproject entry points)."""

    Consumer = Consumer


class KafkaTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`WorkerConsumer` (``kafka://`` brokers)."""

    Consumer = WorkerConsumer
