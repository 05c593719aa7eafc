"""Which partition Kafka's default partitioner puts a key in.

The join relies on every event of an interaction landing in one partition of the
events topic. Producers that pick the partition themselves (librdkafka's default
crc32 partitioner, a hand-chosen partition) break that even with the right key,
so the join agent recomputes the partition as aiokafka and the Java client do
(murmur2 of the key bytes, sign bit cleared, modulo the partition count) and
forwards any event that is not where that says.
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2


def default_partition(key: bytes, partitions: int) -> int:
    """The partition of ``key`` under Kafka's default (murmur2) partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_count(app: Any, topic: str, fallback: int) -> int:
    """The topic's partition count as the consumer's metadata knows it.

    ``fallback`` (the configured count) is used until the metadata is known; the
    worker creates its topics with that count, so the two agree unless the topic
    was created by hand with another.
    """
    try:
        known = app.consumer.topic_partitions(topic)
    except (AttributeError, RuntimeError):
        known = None
    return int(known) if known else fallback
