"""A read-only view of every group's aggregates, for the API process.

The workers' ``group-state`` table is a compacted changelog topic; the API reads
it from the beginning with a plain consumer (no group, all partitions) and keeps
the latest value per group. It never writes: the worker that owns a group stays
its single writer. Readers see the state as of the last micro-batch written.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.aggregate import GroupState, compact_id, stats_view

log = structlog.get_logger(__name__)


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


def _table_key(key: bytes) -> str:
    """Faust writes table keys through its JSON codec: ``"team:search"`` with quotes."""
    if key[:1] == b'"':
        try:
            decoded = orjson.loads(key)
        except orjson.JSONDecodeError:
            decoded = None
        if isinstance(decoded, str):
            return decoded
    return key.decode("utf-8", "replace")


class GroupView:
    """Follows the group-state changelog in the background."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._partitions = partitions
        self._groups: dict[str, GroupState] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.records_read = 0

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await self._consumer.start()
        parts = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._follow(), name="group-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nothing may escape this loop
                log.warning("group view fetch failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        group = _table_key(key)
        self.records_read += 1
        if value is None:
            self._groups.pop(group, None)
            return
        try:
            self._groups[group] = orjson.loads(value)
        except orjson.JSONDecodeError:
            log.warning("unreadable group state", group=group)

    def groups(self) -> list[str]:
        return sorted(self._groups)

    def groups_with_contributor(self, user_id: str) -> list[str]:
        """Groups whose state still counts this user (for forgetting them)."""
        keys = {user_id, compact_id(user_id)}  # a long id is counted by its digest
        return sorted(
            group
            for group, state in self._groups.items()
            if not keys.isdisjoint(state.get("contributors", {}))
            or any(e.get("user_id") == user_id for e in state.get("evidence", ()))
        )

    def known(self, group: str) -> bool:
        """Whether the workers hold state for ``group``."""
        return group in self._groups

    def owner(self, group: str) -> str | None:
        """The org that owns ``group`` (None: unclaimed or unknown); cheap, for every request."""
        state = self._groups.get(group)
        return None if state is None else state.get("org")

    def stats(self, group: str) -> dict[str, Any] | None:
        state = self._groups.get(group)
        return None if state is None else stats_view(state)
