"""The worker's Kafka consumer: Faust's, without a race that skipped records at start-up.

When partitions are assigned, Faust recovers the tables, resumes fetching from the
stream partitions, and only then seeks them to their committed offsets, with the
fetch loop still running (at a worker's first assignment nothing has stopped it).
Records fetched in between were delivered while the streams were still paused (so
skipped, to be read again after the seek), but the fetch loop went on recording them
as read: a record it recorded after the seek moved the read offset past the records
the seek was meant to bring back, which Faust then dropped as already read, and a
record it delivered after the seek made Faust count the offsets in between as a gap
it treats as processed. A successor worker started after a graceful stop lost the
first few records after the committed offset of some partitions (about one CI run
in seven; ``tests/e2e/test_shutdown.py`` printed where: events partition 0 offsets
914-918 and partition 2 offsets 430-435, read by nobody). Stopping the flow before
the seek ends the fetch loop's pass over what it fetched before; Faust resumes the
flow itself right after seeking.

The seek itself (aiokafka's ``seek_to_committed``) leaves a partition with no committed
offset where the fetch had moved it. After a rebalance Faust drops the records it
fetched under the old generation and seeks back to the committed offsets, so on such
a partition those records were never read again: a successor whose predecessor had
not committed any signals yet lost about 1,900 of them (a loop of the exactness tests,
2026-12-06; every signal was on the topic, the group counts were short). Partitions
with no committed offset are now sought to their beginning, which is what
``auto_offset_reset=earliest`` promises; replays are deduplicated downstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = structlog.get_logger(__name__)


class WorkerConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer whose seek to the committed offsets is not raced."""

    async def perform_seek(self) -> None:
        if self.flow_active:
            # both callers (table recovery finishing) resume the flow after the seek
            self.stop_flow()
            await asyncio.sleep(0)  # let the fetch loop leave its pass over old records
        await super().perform_seek()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and partitions with none to their beginning."""
        committed: Mapping[TP, int] = await super().seek_to_committed()
        for tp, offset in committed.items():
            if not offset:  # None (never committed) or 0: aiokafka did not seek it
                await self.seek(tp, 0)
        return committed

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust counts offsets it never delivered as processed (compaction, markers): say so."""
        committed = self._committed_offset.get(tp)
        if committed is None or offset_to > committed + 1:
            log.warning(
                "fetched offsets skipped, counted as processed",
                partition=f"{tp.topic}/{tp.partition}",
                first=offset_from if committed is None else max(offset_from, committed + 1),
                last=offset_to - 1,
            )
        await super()._add_gap(tp, offset_from, offset_to)
