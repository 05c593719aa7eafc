"""A Faust table written once per micro-batch, to explicit changelog partitions.

Agents here process micro-batches that mix partitions, and they write each key
once per batch with :meth:`ExplicitPartitionTable.write_batch`, giving each key's
partition: Faust's own ``table[key] = value`` would send the changelog to the
partition of whichever event happens to be current (restoring the key on the
wrong worker after a rebalance), and would not wait for the broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust
import orjson
from faust.utils import json as faust_json

from streams.outputs import Outgoing, deliver


class ExplicitPartitionTable(faust.Table):  # type: ignore[misc]
    """Read with :meth:`snapshot`, write with :meth:`write_batch` (never ``table[key] = v``)."""

    def snapshot(self, key: str) -> Any:
        """A private copy of ``key``'s value (None if absent), for a batch to fold into.

        Processors update their state in place; on the stored value itself, a batch
        that failed or was cut after folding but before delivering its outputs would
        leave its effect in the table with the outputs never sent (an event marked
        seen whose signals were lost). The table changes only through
        :meth:`write_batch`, after delivery.
        """
        value = self.data.get(key)
        return None if value is None else orjson.loads(orjson.dumps(value))

    async def write_batch(
        self, stage: str, writes: Sequence[tuple[str, Any, int]], timeout_s: float
    ) -> None:
        """Write a batch's ``(key, value or None to delete, partition)`` and wait for the broker.

        The same changelog records ``put``/``remove`` would produce (Faust's JSON
        codec for key and value, a tombstone for a delete), sent together and
        awaited, then applied to the in-memory table. Faust's per-key path
        (``on_key_set`` -> ``send_changelog`` -> the topic's send buffer) cost tens
        of microseconds per key, paid for every slot and group a batch touches;
        waiting here also means a batch is acked only once its state is durable,
        not at the next commit's producer flush. Recovery reads these records like
        any other changelog records.
        """
        topic = self.changelog_topic
        records = [
            Outgoing(
                topic,
                faust_json.dumps(key),
                None if value is None else faust_json.dumps(value),
                [],
                partition,
            )
            for key, value, partition in writes
        ]
        await deliver(stage, records, timeout_s)
        data = self.data
        for key, value, _ in writes:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
