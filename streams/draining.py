"""Graceful shutdown: let the micro-batches in progress finish, then commit them.

Agents read with ``noack_take`` and ack a batch only once its outputs are sent and
its table written. When the worker stops, Faust pauses the partitions and then
(through :meth:`WorkerApp._consumer_wait_empty`) gives us the moment to wait:
every batch already taken finishes and is acked, and the offsets are committed
before the worker leaves its group, so a successor replays nothing that was
processed. A batch taken after that moment (one still filling when the
partitions were paused) is not started: it stays unacked and is read again by
the next owner, so what a stopping worker processed is exactly what it committed.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class InFlight:
    """Counts micro-batches between being taken and being acked."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._never = asyncio.Event()

    def close(self) -> None:
        """No batch starts from now on: what is taken later stays unacked for the successor."""
        self._closed = True

    async def __aenter__(self) -> InFlight:
        if self._closed:
            # the worker is stopping and has committed: hold this batch (unprocessed,
            # unacked) until Faust cancels the agent, so its offsets stay uncommitted
            await self._never.wait()
        self.count += 1
        self._idle.clear()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no batch is in progress; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
