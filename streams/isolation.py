"""Run a micro-batch so that no exception escapes the agent and no input is lost.

A batch that fails is retried one input at a time; an input that still fails is
dead-lettered with the error's type as its detail (never a stack trace), and if
even that cannot be sent it is logged with its source position so it can be
replayed by hand. The caller acks the inputs afterwards either way (see
:func:`ack_all`): one poison message must not stall its partition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from streams.dead_letters import rejected
from streams.outputs import deliver

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
Process = Callable[["WorkerApp", list[Any]], Awaitable[None]]


async def ack_all(stream: Any, events: Any) -> None:
    """Ack a batch only after it was processed and its outputs delivered.

    Agents read with ``noack_take``: Faust's ``take_events`` acks its buffer in a
    ``finally``, so a batch interrupted by shutdown or a rebalance would be
    committed without having been processed, and lost.
    """
    for event in events:
        await stream.ack(event)


async def run_isolated(app: WorkerApp, stage: str, events: list[Any], process: Process) -> None:
    try:
        await process(app, events)
        return
    except Exception:
        log.exception("batch failed, retrying one by one", stage=stage, events=len(events))
    for event in events:
        try:
            await process(app, [event])
        except Exception as exc:  # noqa: BLE001 - becomes a dead letter below
            await _dead_letter(app, stage, event, exc)


async def _dead_letter(app: WorkerApp, stage: str, event: Any, exc: Exception) -> None:
    message = event.message
    source = f"{message.topic}/{message.partition}/{message.offset}"
    try:
        record = rejected(app, message, "processing_error", f"{stage}: {type(exc).__name__}")
        await deliver(stage, [record], app.settings.external_timeout_s)
    except Exception:
        log.exception(
            "could not dead-letter an input; replay it by hand", stage=stage, source=source
        )
