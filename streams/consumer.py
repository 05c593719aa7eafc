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
from typing import Any

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

log = structlog.get_logger(__name__)


class WorkerConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer whose seek to the committed offsets is not raced.

    It also hands each fetched record to the streams with one task instead of four
    (see :meth:`wait_first`), which was the largest single cost of consuming.
    """

    _flow_waiters: dict[str, asyncio.Future[Any]] | None = None

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

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:  # noqa: ASYNC109
        """Faust's fetch loop calls this once per record: ``wait_first(deliver, suspended)``.

        mode's version wraps the delivery, the suspend-flow wait and the service's
        stopped and crashed waits in four new tasks per record, and cancels three.
        For that call, while none of the three events is set, this waits on one task
        for the delivery and on three long-lived waits shared by every record, with
        the same outcome: the delivery finishes, or it is cancelled when the flow is
        suspended or the consumer stops or crashes. Any other call, and any call made
        while one of the events is set (a rebalance, the seek, shutdown), goes to
        mode's version unchanged.
        """
        if (
            timeout is None
            and len(coros) == 2
            and _waits_for(coros[1], self.suspend_flow)
            and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
        ):
            coros[1].close()  # the shared wait below stands in for it
            delivery = asyncio.ensure_future(coros[0])
            try:
                await asyncio.wait(
                    [delivery, *self._shared_flow_waiters()],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if delivery.done():
                    return WaitResults([coros[0]], [delivery.result()], False)
                return WaitResults([], [], True)
            finally:
                if not delivery.done():
                    delivery.cancel()
        return await super().wait_first(*coros, timeout=timeout)  # type: ignore[no-any-return]

    def _shared_flow_waiters(self) -> list[asyncio.Future[Any]]:
        """Waits for the suspend-flow, stopped and crashed events, made anew once done."""
        waiters = self._flow_waiters
        if waiters is None:
            waiters = self._flow_waiters = {}
        events = {
            "suspend": self.suspend_flow,
            "stopped": self._stopped,
            "crashed": self._crashed,
        }
        for name, event in events.items():
            waiter = waiters.get(name)
            if waiter is None or waiter.done():
                waiters[name] = asyncio.ensure_future(event.wait())
        return list(waiters.values())

    async def on_stop(self) -> None:
        for waiter in (self._flow_waiters or {}).values():
            waiter.cancel()
        await super().on_stop()


def _waits_for(coro: Any, event: Any) -> bool:
    """True if ``coro`` is ``event.wait()`` not yet started (mode's ``Event.wait``)."""
    frame = getattr(coro, "cr_frame", None)
    return (
        frame is not None
        and getattr(coro, "cr_code", None) is type(event).wait.__code__
        and frame.f_locals.get("self") is event
    )
