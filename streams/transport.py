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

Both transports use :class:`ContiguousCommitConsumer`, which closes a hole in
Faust's offset commits (see its docstring).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import aiokafka
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

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


class ContiguousCommitConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's consumer, but it never commits past an offset no agent has processed.

    Faust commits the first run of consecutive acked offsets, and checks that the
    run starts at the committed position only as ``min(acked) - committed > 1``
    and only when the committed offset is truthy. So one message missing right
    at the committed position (a message fetched before a rebalance and skipped
    after it as stale, to be fetched again) was committed over and lost, and with
    committed offset 0 or unknown nothing was checked at all. Found by the
    SIGKILL restart test: a single early-feedback event, never processed, while
    its neighbours were. Here a run is committed only if it starts exactly at
    the committed position; until a position is known, only if it starts at the
    lowest offset delivered for that partition since it was assigned.
    """

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if acked:
            committed = self._committed_offset.get(tp)
            floor = committed if committed is not None else self._first_read.get(tp)
            if floor is not None and min(acked) > floor and not self._gap.get(tp):
                return None  # something at the head is not processed yet: wait for it
        return super()._new_offset(tp)  # type: ignore[no-any-return]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_read: dict[TP, int] = {}
        self._read_offset = _ReadOffsets(self._first_read)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and partitions with none to their beginning.

        After a rebalance Faust drops the records it had fetched under the old
        generation and seeks back to the committed offsets to read them again; but
        aiokafka leaves a partition with no committed offset (or offset 0) where it
        was, so those records were never read again in this process (a successor
        started after a graceful stop missed a whole bundle of signals). The
        beginning is what ``auto_offset_reset=earliest`` means for such a partition;
        anything read twice is deduplicated downstream.
        """
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            if not offset:
                await self.seek(tp, 0)
        return committed  # type: ignore[no-any-return]


class _ReadOffsets(defaultdict):  # type: ignore[type-arg]
    """Faust's per-partition read offsets, also remembering the first one since assignment."""

    def __init__(self, first: dict[TP, int]) -> None:
        super().__init__(lambda: None)
        self.first = first

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        if offset is not None and tp not in self.first:
            self.first[tp] = offset
        super().__setitem__(tp, offset)

    def pop(self, tp: TP, *default: Any) -> Any:  # revoked: forget it
        self.first.pop(tp, None)
        return super().pop(tp, *default)


class TrueEndOffsetsConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with high watermarks that count records, not batches."""

    async def _highwaters(self, partitions: Any) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        bootstrap = faust_aiokafka.server_list(self.transport.url, self.transport.default_port)
        return await true_end_offsets(bootstrap, reported)


class Consumer(ContiguousCommitConsumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return TrueEndOffsetsConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Registered as the ``tansu`` Faust transport (see pyproject entry points)."""

    Consumer = Consumer


class KafkaTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the contiguous-commit consumer (``kafka://``)."""

    Consumer = ContiguousCommitConsumer
