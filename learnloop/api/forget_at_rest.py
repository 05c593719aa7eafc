"""Forgetting reaches the versions kept in Kafka, not only what the API shows.

A ``forget_user`` command makes a new version without the user, and the API shows
every older version as if the user had been forgotten there too
(:func:`processors.memory_ops.as_forgotten`). The older versions' records in the
versions topic still held the user's ids, and the texts of examples taken from their
interactions, for as long as the topic keeps them, which is forever: it is
compacted on one key per version. So after a forgetting, each older version that
names the user is written again under its own key, in its own partition, as the
API shows it. Compaction then drops the original (when the broker next cleans
that segment), and a replica that reads the topic from the start reads the
rewritten version after the original, so it answers as before in between.
"""

from __future__ import annotations

import orjson
import structlog

from learnloop.api.memory_log import MemoryLog
from learnloop.producer import EventProducer
from processors.memory import version_key
from processors.memory_ops import as_forgotten

log = structlog.get_logger(__name__)


async def redact_history(
    memory: MemoryLog, producer: EventProducer, topic: str, group: str, user_id: str
) -> list[int]:
    """Rewrite ``group``'s versions older than the user's forgetting; the versions rewritten.

    Nothing is written unless the API has read a ``forget_user`` version that removed
    ``user_id`` from ``group``. Raises ``BrokerError`` if the broker does not confirm
    a write (the caller reports it; running the forgetting again finishes the job).
    """
    forgotten = memory.forgotten(group)
    forgetting = forgotten.get(user_id)
    partition = memory.partition_of(group)
    if forgetting is None or partition is None:
        return []
    rewritten = []
    for header in memory.headers(group):
        if header.version >= forgetting:
            break
        stored = memory.snapshot(group, header.version)
        if stored is None:
            continue
        # as the API shows it: without every user forgotten after it, not only this
        # one (a rewrite for one must not put back another, rewritten a moment ago)
        shown = as_forgotten(stored, forgotten)
        if shown is stored:  # never named them
            continue
        key = version_key(group, header.version)
        await producer.send_raw(topic, key, orjson.dumps(shown), partition=partition)
        rewritten.append(header.version)
    if rewritten:
        log.info("forgotten user's older versions rewritten", group=group, versions=len(rewritten))
    return rewritten
