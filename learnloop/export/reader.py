"""Read a topic once, from its beginning to the end it had when the read started.

The end of every partition is fixed first, so producers writing during an export
neither make it chase them nor end it early. On the embedded broker (Tansu),
whose ListOffsets under-reports, the true end is measured by reading forward from
the reported one (``streams.transport.true_end_offsets``). Fetches are small and
batches are capped, so what the reader holds does not grow with the topic. The
worker's control records (``schemas.control``) are not data and are skipped.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from faust.types import TP

from learnloop.errors import BrokerError
from schemas.control import control_kind

#: records handed over per batch, and bytes fetched per partition / per request
MAX_RECORDS: Final = 500
PARTITION_FETCH_BYTES: Final = 128 * 1024
FETCH_BYTES: Final = 512 * 1024

OnRecords = Callable[[list[tuple[bytes | None, bytes | None]]], None]
TrueEnds = Callable[[list[str], Mapping[TP, int]], Awaitable[dict[TP, int]]]


def _true_end_offsets() -> TrueEnds:
    # imported by name: streams/ is the Faust app, outside this package's strict typing
    module = importlib.import_module("streams.transport")
    return cast(TrueEnds, module.true_end_offsets)


async def read_topic(
    bootstrap: str,
    topic: str,
    on_records: OnRecords,
    *,
    true_ends: bool,
    on_total: Callable[[int], None] | None = None,
    stall_timeout_s: float = 60.0,
    connect_timeout_s: float = 30.0,
) -> int:
    """Hand every ``(key, value)`` of ``topic`` to ``on_records`` in batches; return the count.

    A topic that does not exist reads as empty. Raises :class:`BrokerError` when the
    broker cannot be reached or no record arrives for ``stall_timeout_s`` before the end.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        fetch_max_bytes=FETCH_BYTES,
        request_timeout_ms=int(connect_timeout_s * 1000),
    )
    try:
        async with asyncio.timeout(connect_timeout_s):
            await consumer.start()
    except (TimeoutError, OSError, KafkaError) as exc:
        await consumer.stop()
        raise BrokerError(f"cannot reach the broker at {bootstrap}: {type(exc).__name__}") from None
    try:
        return await _read(
            consumer, bootstrap, topic, on_records, true_ends, on_total, stall_timeout_s
        )
    finally:
        await consumer.stop()


async def _read(
    consumer: Any,
    bootstrap: str,
    topic: str,
    on_records: OnRecords,
    true_ends: bool,
    on_total: Callable[[int], None] | None,
    stall_timeout_s: float,
) -> int:
    if topic not in await consumer.topics():
        if on_total is not None:
            on_total(0)
        return 0
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    begins: dict[Any, int] = await consumer.beginning_offsets(parts)
    ends: dict[Any, int] = await consumer.end_offsets(parts)
    if true_ends:
        measured = await _true_end_offsets()(
            bootstrap.split(","), {TP(tp.topic, tp.partition): int(ends[tp]) for tp in parts}
        )
        ends = {tp: measured[TP(tp.topic, tp.partition)] for tp in parts}
    remaining = {tp for tp in parts if ends[tp] > begins[tp]}
    if on_total is not None:
        on_total(sum(ends[tp] - begins[tp] for tp in remaining))
    if not remaining:
        return 0
    consumer.assign(sorted(remaining, key=lambda tp: tp.partition))
    for tp in remaining:
        consumer.seek(tp, begins[tp])
    read = 0
    last_progress = time.monotonic()
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=200, max_records=MAX_RECORDS)
        for tp, records in batch.items():
            end = ends[tp]
            kept = [
                (r.key, r.value)
                for r in records
                if r.offset < end and control_kind(r.headers) is None  # the worker's markers
            ]
            if kept:
                on_records(kept)
                read += len(kept)
                last_progress = time.monotonic()
            if records and records[-1].offset + 1 >= end:
                remaining.discard(tp)
                consumer.pause(tp)
        if not any(batch.values()):
            # compaction and transaction markers leave offsets with no record at the end
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if remaining and time.monotonic() - last_progress > stall_timeout_s:
                raise BrokerError(
                    f"reading {topic} stalled {stall_timeout_s:.0f} s before its end "
                    f"({len(remaining)} partitions unfinished)"
                )
    return read
