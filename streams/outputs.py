"""Sending a batch's outputs and waiting until the broker has them.

An agent writes its table only after its outputs are delivered: if the worker
dies in between, the input is replayed and the outputs are sent again (and
deduped downstream); the reverse order could lose them. A send that times out
is retried with backoff instead of being dropped, and never raises out of the
agent loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import faust
import structlog
from aiokafka.errors import MessageSizeTooLargeError, UnsupportedVersionError

from learnloop import metrics

log = structlog.get_logger(__name__)

#: Errors that no retry can fix: the caller must handle the input some other way
#: (the agents fall back to one input at a time and dead-letter the one that fails).
PERMANENT_ERRORS = (MessageSizeTooLargeError, UnsupportedVersionError, TypeError, ValueError)


@dataclass(slots=True)
class Outgoing:
    topic: faust.TopicT
    key: bytes | None
    value: bytes | None  # None only for a table tombstone
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None


async def deliver(
    stage: str, records: Sequence[Outgoing], timeout_s: float, max_backoff_s: float = 5.0
) -> None:
    """Send every record and wait for all acknowledgements, retrying transient failures.

    Raises only for :data:`PERMANENT_ERRORS`; the caller isolates the culprit.

    Records go straight to the app's producer (Faust's transport producer, a thin
    layer over aiokafka's ``send``) rather than through ``Topic.send``: the topic
    layer's per-message bookkeeping (future messages, callbacks, sensors) was a
    large share of the worker's time, and none of it is needed here because every
    send is awaited below. The worker creates its topics at start.
    """
    if not records:
        return
    producer = records[0].topic.app.producer
    attempt = 0
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                futures = [
                    await producer.send(
                        r.topic.get_topic_name(),
                        r.key,
                        r.value,
                        r.partition,
                        None,
                        r.headers or None,
                    )
                    for r in records
                ]
                await asyncio.gather(*futures)
            return
        except PERMANENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - transient: retry, never drop
            attempt += 1
            metrics.SEND_RETRIES.labels(stage).inc()
            delay = min(max_backoff_s, 0.1 * 2**attempt)
            log.warning(
                "send failed, retrying",
                stage=stage,
                records=len(records),
                attempt=attempt,
                error=type(exc).__name__,
                retry_in_s=delay,
            )
            await asyncio.sleep(delay)


def now_ms() -> int:
    """Wall clock in epoch milliseconds: handed to processors, never read by them."""
    return int(time.time() * 1000)
