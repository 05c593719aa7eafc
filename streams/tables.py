"""A Faust table whose changelog partition is given explicitly per write.

Agents here process micro-batches that mix partitions, and they write each key
once per batch. Faust would otherwise send the changelog to the partition of
whichever event happens to be current, which would restore the key on the
wrong worker after a rebalance.
"""

from __future__ import annotations

from typing import Any

import faust


class ExplicitPartitionTable(faust.Table):  # type: ignore[misc]
    """``put(key, value, partition)`` writes the changelog to that partition."""

    _write_partition: int | None = None

    def put(self, key: str, value: Any, partition: int) -> None:
        self._write_partition = partition
        try:
            self[key] = value
        finally:
            self._write_partition = None

    def remove(self, key: str, partition: int) -> None:
        self._write_partition = partition
        try:
            self.pop(key, None)
        finally:
            self._write_partition = None

    def partition_for_key(self, key: Any) -> int | None:
        if self._write_partition is not None:
            return self._write_partition
        return super().partition_for_key(key)  # type: ignore[no-any-return]
