"""Signals travel many to a Kafka message: one bundle per signals partition and batch.

Each event becomes one signal per group it belongs to (four or more), and the
per-message cost of Faust and aiokafka (send, fetch, stream, ack) was most of the
worker's time when every signal was its own message (see docs/OPERATIONS.md,
"Throughput: where the time goes"). The join agent therefore puts the signals of
a batch that go to one partition of the signals topic into one message,
``{"signals": [...]}``, in the partition Kafka's default partitioner gives each
signal's group (murmur2 of the group name, what a message keyed by the group
gets), so the worker that owns a group still gets all of its signals, and the
memory stage's control signals, still sent one per message keyed by group, land
in the same partition. Bundles are capped in signals and bytes so that none comes
near the broker's message size limit.

Replays stay exact: a signal inside a bundle is identified by its position
``offset * POSITION_STRIDE + index`` in the signals topic (what aggregation
compares with the last position it applied), and by its origin in the events
topic, which does not depend on how signals were bundled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from processors.signals import Signal
from streams.outputs import Outgoing
from streams.partitioning import default_partition, partition_count

if TYPE_CHECKING:
    from streams.app import WorkerApp

#: at most this many signals in one message, and at most this many bytes
SIGNALS_PER_BUNDLE = 500
BUNDLE_BYTES = 256 * 1024
#: positions of signals inside one message: offset * stride + index (stride > cap)
POSITION_STRIDE = 1 << 20


@lru_cache(maxsize=65_536)
def group_partition(group: str, partitions: int) -> int:
    """The signals partition of ``group``: where a message keyed by it would go."""
    return default_partition(group.encode(), partitions)


def bundle_records(app: WorkerApp, signals: Iterable[Signal]) -> list[Outgoing]:
    """The messages that carry ``signals``, in order within each partition."""
    partitions = partition_count(app, app.settings.topics.signals, app.settings.partitions)
    return [
        Outgoing(app.signals_topic, None, value, [], partition)
        for partition, value in bundle(signals, partitions)
    ]


def bundle(signals: Iterable[Signal], partitions: int) -> list[tuple[int, bytes]]:
    """``(partition, message value)`` pairs: each signal in its group's partition, in order."""
    by_partition: dict[int, list[bytes]] = {}
    for signal in signals:
        partition = group_partition(signal["group"], partitions)
        by_partition.setdefault(partition, []).append(orjson.dumps(signal))
    return [
        (partition, b'{"signals":[' + b",".join(chunk) + b"]}")
        for partition, encoded in by_partition.items()
        for chunk in _chunks(encoded)
    ]


def _chunks(encoded: list[bytes]) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    for item in encoded:
        if chunk and (len(chunk) >= SIGNALS_PER_BUNDLE or size + len(item) > BUNDLE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield chunk


def unbundle(value: bytes) -> list[Any]:
    """The signals in one message: a bundle's list, or a lone signal (control signals).

    Raises ``orjson.JSONDecodeError`` (a ``ValueError``) for bytes that are not JSON.
    """
    decoded = orjson.loads(value)
    if isinstance(decoded, dict) and isinstance(decoded.get("signals"), list):
        return decoded["signals"]  # type: ignore[no-any-return]
    return [decoded]
