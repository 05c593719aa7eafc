"""Graceful shutdown: let the micro-batches in progress finish, then commit them.

Agents read with ``noack_take`` and ack a batch only once its outputs are sent and
its table written. When the worker stops, Faust pauses the partitions and then
(through :meth:`WorkerApp._consumer_wait_empty`) gives us the moment to wait:
every batch already taken finishes and is acked, and the offsets are committed
before the worker leaves its group, so a successor replays nothing that was
processed. Batches still filling (taken from nothing yet) are left unacked and
are read again by the next owner, which is safe: effects are idempotent.
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

    async def __aenter__(self) -> InFlight:
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
