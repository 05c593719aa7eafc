"""The API's view of memory: follows the versions log and keeps the vector index in step.

The versions topic is the source of truth; this follower reads it from the
beginning on start, keeps every group's versions for the read endpoints (the
newest parsed, every one as a compressed record in a file: see
:class:`GroupHistory` and :mod:`learnloop.api.version_archive`), and upserts
each group's current items into the vector store in one batch per poll
(deleting items that left the current version). Starting it on an empty store
*is* the rebuild: the index is derived data.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import re
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from learnloop import metrics
from learnloop.api.version_archive import Ref, VersionArchive
from learnloop.embeddings.factory import embed_off_loop
from learnloop.store.port import Point, StoreError, VectorStore
from processors.context import EXAMPLE_KINDS
from processors.embedding import Embedder
from processors.groups import scope_of
from processors.memory import MemoryItem, Snapshot
from processors.memory_ops import first_forgetting, forgotten_by

log = structlog.get_logger(__name__)
#: bound on one embedding call made for the index (a remote or dense embedder)
EMBED_TIMEOUT_S = 60.0
COLLECTION = "memory"


def collection_for(embedder_name: str) -> str:
    """One collection per embedder: vectors of two embedders never share an index.

    The default (hashing) keeps the historical name ``memory``; another embedder gets
    ``memory-<slug>``, filled from the versions log when the API starts, so switching
    embedders needs no manual step (and switching back finds the old index).
    """
    if embedder_name == "hashing-v1-384":
        return COLLECTION
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", embedder_name).strip("-_")
    digest = hashlib.blake2b(embedder_name.encode(), digest_size=4).hexdigest()
    return f"{COLLECTION}-{slug[:40]}-{digest}"


INDEXED_STATUSES = ("active", "proposed")
KEYWORD_FIELDS = ("group", "kind", "status", "facet")


def facet(group: str, kind: str, status: str) -> str:
    """One keyword naming ``(group, kind, status)``: a context search filters on it alone.

    Measured on qdrant-edge with 200,000 points: one any-of condition on this field
    took 0.07 ms where ``group`` + ``kind`` + ``status`` took 0.15 ms. Kinds and
    statuses never contain ``|``, so a value names exactly one triple.
    """
    return f"{group}|{kind}|{status}"


def item_text(item: MemoryItem) -> str:
    """What an item is retrieved by: its text and, for examples, the query it answers."""
    return " ".join(part for part in (item.get("query"), item["text"]) if part)


RECENT_PARSED = 2
"""Versions of each group kept parsed: the current one and its parent.

Why: every context request reads the current version; indexing a new version and
reading a forget_user version need its parent, as does the usual diff. Each parsed
version of 30 items is ~69 KiB, times every group (1,000 groups: 134 MiB at 2, 268
at 4), so older ones, pinned or browsed, come from OLD_PARSED_CACHE instead."""

OLD_PARSED_CACHE = 256
"""Older versions kept parsed once read, across all groups, least recently used first out.

Why: someone paging through a group's history or diffing two old versions reads
the same few versions again and again, as do context requests pinned to an older
version; each is ~69 KiB parsed (30 items), so 256 bound this cache near 18 MiB."""

PACK_LEVEL = 1
"""zlib level of the stored records. Measured on a 30-item version (uuid ids): level 1
makes 7.2 KB of 23.7 KB in ~0.13 ms; level 6 is 6% smaller and takes 2-3x as long,
paid for every version read when the API starts. Decompressing costs the same."""


@dataclass(frozen=True, slots=True)
class VersionHeader:
    """What the versions list shows of a version: kept so listing decompresses nothing."""

    version: int
    parent: int | None
    reason: str
    created_ms: int
    actor: str | None
    items: dict[str, int]  # item count by status, in the order statuses first appear

    @classmethod
    def of(cls, snapshot: Snapshot) -> VersionHeader:
        return cls(
            version=snapshot["version"],
            parent=snapshot["parent"],
            reason=snapshot["reason"],
            created_ms=snapshot["created_ms"],
            actor=snapshot.get("actor"),
            items=dict(Counter(i["status"] for i in snapshot["items"])),
        )


@dataclass(slots=True)
class GroupHistory:
    """One group's versions: each compressed in the archive, the RECENT_PARSED newest also parsed.

    Why: parsed, a 30-item version holds ~69 KiB of dicts and strings; as its record's
    bytes through zlib, ~7 KB (uuid ids) or ~1.2 KB (repetitive text), and in the
    archive's file only its ``(offset, length)``. Keeping all of them parsed, or all
    compressed in the heap, grew an API replica without bound (a decay alone adds a
    version per fading group every few days).
    """

    headers: dict[int, VersionHeader] = field(default_factory=dict)
    packed: dict[int, Ref] = field(default_factory=dict)
    recent: dict[int, Snapshot] = field(default_factory=dict)
    # forget_user version -> the users it removed from its parent
    removed: dict[int, set[str]] = field(default_factory=dict)
    # parent version -> forget_user versions naming it, to redo if the parent is (re)read
    forgets_of: dict[int, set[int]] = field(default_factory=dict)
    # the versions topic's partition holding this group's versions (where rewrites go)
    partition: int | None = None


class MemoryLog:
    """Follows the versions and results topics; answers reads; indexes current items."""

    def __init__(
        self,
        bootstrap: str,
        versions_topic: str,
        results_topic: str,
        partitions: int,
        store: VectorStore,
        embedder: Embedder,
        history_dir: Path | None = None,
    ) -> None:
        """``history_dir``: where the file of compressed versions goes (None: in memory)."""
        self._bootstrap = bootstrap
        self._versions_topic = versions_topic
        self._results_topic = results_topic
        self._partitions = partitions
        self.store = store
        self.embedder = embedder
        self.collection = collection_for(embedder.name)
        self._history: dict[str, GroupHistory] = {}
        self._history_dir = history_dir
        self._archive = VersionArchive(None)  # replaced by start(): a fresh file per run
        self._old: OrderedDict[tuple[str, int], Snapshot] = OrderedDict()  # OLD_PARSED_CACHE
        self._current: dict[str, int] = {}
        self._by_id: dict[tuple[str, int], dict[str, MemoryItem]] = {}
        self._unsettled = 0  # items read since the heap was last settled
        self._cheapest: dict[tuple[str, int], int | None] = {}
        # group -> its version last in the index (None: none yet), for each group whose
        # current version is not in the index yet; see _index_behind
        self._unindexed: dict[str, Snapshot | None] = {}
        self._index_retry_at = 0.0
        self._index_backoff_s = 0.0
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[AIOKafkaConsumer] = []
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        """Read the logs from here on. Once only: :meth:`stop` deletes the history's file."""
        dim = await embed_off_loop(self.embedder, lambda: self.embedder.dim, EMBED_TIMEOUT_S)
        await self.store.ensure_collection(self.collection, dim, KEYWORD_FIELDS)
        versions = await self._consumer([self._versions_topic], self._partitions, beginning=True)
        results = await self._consumer([self._results_topic], 1, beginning=False)
        # opened last: nothing above can fail and leave the file behind
        self._archive = VersionArchive(self._history_dir)
        self._tasks = [
            asyncio.create_task(
                self._follow(versions, self._apply_versions, self.caught_up, self._index_behind),
                name="versions",
            ),
            asyncio.create_task(
                self._follow(results, self._apply_results, asyncio.Event()), name="results"
            ),
        ]

    async def _consumer(
        self, topics: list[str], partitions: int, *, beginning: bool
    ) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            auto_offset_reset="earliest" if beginning else "latest",
        )
        await consumer.start()
        parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(parts)
        if beginning:
            await consumer.seek_to_beginning(*parts)
        else:
            await consumer.seek_to_end(*parts)
        self._consumers.append(consumer)
        return consumer

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for consumer in self._consumers:
            await consumer.stop()
        self._archive.close()

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def _follow(
        self,
        consumer: AIOKafkaConsumer,
        apply: Any,
        idle: asyncio.Event,
        on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Apply records as they come; ``idle`` is set at the first empty poll (caught up).

        ``on_idle`` runs after each empty poll: work left over from earlier batches.
        """
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following; log and back off
                log.warning("memory log fetch failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            records = [r for rs in batch.values() for r in rs]
            if not records:
                idle.set()
                if on_idle is not None:
                    await on_idle()
                continue
            try:
                await apply(records)
            except Exception:
                log.exception("applying memory log records failed", records=len(records))

    async def _apply_versions(self, records: list[Any]) -> None:
        for record in records:
            if record.value is None:
                continue
            try:
                snapshot: Snapshot = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                log.warning("unreadable memory version", key=record.key)
                continue
            group = snapshot["group"]
            previous = self._current.get(group)
            self._unsettled += 1 + len(snapshot["items"])
            old = self.snapshot(group, previous) if previous is not None else None
            self._store(record.value, snapshot)
            self._history[group].partition = record.partition
            if previous is None or snapshot["version"] > previous:
                self._current[group] = snapshot["version"]
                if previous is not None:
                    self._by_id.pop((group, previous), None)
                self._unindexed.setdefault(group, old)
        await self._index_behind()
        if not self.caught_up.is_set() or self._unsettled >= SETTLE_AFTER_ITEMS:
            _settle_heap()
            self._unsettled = 0

    def _store(self, raw: bytes, snapshot: Snapshot) -> None:
        """Keep a version read from the log: compressed, and parsed while among the newest."""
        group, version = snapshot["group"], snapshot["version"]
        history = self._history.setdefault(group, GroupHistory())
        history.headers[version] = VersionHeader.of(snapshot)
        replaced = history.packed.get(version)
        if replaced is not None:
            self._archive.forget(replaced)
        history.packed[version] = self._archive.put(zlib.compress(raw, PACK_LEVEL))
        history.recent[version] = snapshot
        self._old.pop((group, version), None)
        self._unparsed((group, version))
        while len(history.recent) > RECENT_PARSED:
            oldest = min(history.recent)
            del history.recent[oldest]
            self._unparsed((group, oldest))
        self._note_forgetting(group, history, snapshot)

    def _unparsed(self, key: tuple[str, int]) -> None:
        """Drop what ``item`` and ``cheapest_example`` derived from a version no longer parsed.

        Why: they would otherwise keep its items alive (and gain an entry per version
        ever read), which is the growth that keeping versions compressed removes.
        """
        self._by_id.pop(key, None)
        self._cheapest.pop(key, None)

    def _note_forgetting(self, group: str, history: GroupHistory, snapshot: Snapshot) -> None:
        """Keep ``history.removed``: what each forget_user version read removed.

        Why: reading a version older than a forgetting must show it without the
        forgotten users; recomputing that from every version per request would
        decompress the whole history. A forget_user version's parent is normally
        still parsed when it arrives; if not, it is decompressed once, here.
        """
        version = snapshot["version"]
        if snapshot["reason"] == "forget_user":
            history.forgets_of.setdefault(snapshot["parent"] or 0, set()).add(version)
        for child in history.forgets_of.get(version, set()) | {version}:
            header = history.headers[child]
            if header.reason != "forget_user":
                continue
            parent = self.snapshot(group, header.parent or 0)
            forgetting = snapshot if child == version else self.snapshot(group, child)
            if parent is not None and forgetting is not None:
                # only ever added to: a parent rewritten without the forgotten user
                # (learnloop.api.forget_at_rest) must not make older versions, not
                # rewritten yet, read with them again
                removed = history.removed.setdefault(child, set())
                removed |= forgotten_by(parent, forgetting)

    async def _index_behind(self) -> None:
        """Index every group whose current version is not in the index, unless backing off.

        Why: the versions are read once; a version whose indexing failed (the store
        down for a moment) would otherwise stay out of context answers until the
        group's next version. Its rules are served from memory meanwhile, and a hit
        counts only as an item of the current version, so answers stay consistent;
        they only lack that version's new examples until the retry succeeds. Each
        failure doubles the wait before the next attempt, up to INDEX_RETRY_MAX_S;
        versions read meanwhile join the next attempt.
        """
        if not self._unindexed or time.monotonic() < self._index_retry_at:
            return
        try:
            await self._index(self._unindexed)
        except Exception as exc:  # noqa: BLE001 - never lose a version: retry it
            self._index_backoff_s = min(
                max(2 * self._index_backoff_s, INDEX_RETRY_FIRST_S), INDEX_RETRY_MAX_S
            )
            self._index_retry_at = time.monotonic() + self._index_backoff_s
            log.warning(
                "memory index behind: indexing failed",
                groups=len(self._unindexed),
                error=type(exc).__name__,
                reason=str(exc),
                retry_in_s=self._index_backoff_s,
            )
        else:
            if self._index_backoff_s:
                log.info("memory index caught up", groups=len(self._unindexed))
            self._unindexed = {}
            self._index_backoff_s = 0.0
            self._index_retry_at = 0.0
        metrics.MEMORY_INDEX_BEHIND.set(len(self._unindexed))

    async def _index(self, changed: dict[str, Snapshot | None]) -> None:
        """One batched upsert and delete for every group whose current version moved."""
        points: list[Point] = []
        stale: list[str] = []
        for group, old in changed.items():
            current = self.snapshot(group)
            assert current is not None
            keep = {i["item_id"] for i in current["items"] if i["status"] in INDEXED_STATUSES}
            if old is not None:
                stale.extend(i["item_id"] for i in old["items"] if i["item_id"] not in keep)
            items = [i for i in current["items"] if i["status"] in INDEXED_STATUSES]
            texts = [item_text(i) for i in items]
            vectors = (
                await embed_off_loop(
                    self.embedder, lambda t=texts: self.embedder.embed(t), EMBED_TIMEOUT_S
                )
                if items
                else []
            )
            points.extend(
                Point(
                    item["item_id"],
                    vector,
                    {
                        "group": group,
                        "kind": item["kind"],
                        "status": item["status"],
                        "version": current["version"],
                        "item_id": item["item_id"],
                        "facet": facet(group, item["kind"], item["status"]),
                    },
                )
                for item, vector in zip(items, vectors, strict=True)
            )
            for status in ("active", "proposed"):
                metrics.MEMORY_ITEMS.labels(scope_of(group), status).set(0)
        if stale:
            await self.store.delete(self.collection, ids=stale)
        if points:
            await self.store.upsert(self.collection, points)
        self._update_item_gauges()

    def _update_item_gauges(self) -> None:
        totals: dict[tuple[str, str], int] = {}
        for group in self._current:
            snapshot = self.snapshot(group)
            for item in snapshot["items"] if snapshot else ():
                key = (scope_of(group), item["status"])
                totals[key] = totals.get(key, 0) + 1
        for (scope, status), count in totals.items():
            metrics.MEMORY_ITEMS.labels(scope, status).set(count)

    async def _apply_results(self, records: list[Any]) -> None:
        for record in records:
            try:
                result = orjson.loads(record.value)
            except (orjson.JSONDecodeError, TypeError):
                continue
            key = result.get("command_id") or result.get("trigger_id")
            if not key:
                continue
            self._results[key] = result
            while len(self._results) > 10_000:
                self._results.popitem(last=False)
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def wait_result(self, command_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The outcome of a command once its owner applied it, or None on timeout."""
        if command_id in self._results:
            return self._results[command_id]
        waiter = self._waiters.setdefault(command_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return None
        finally:
            if waiter.done():
                self._waiters.pop(command_id, None)

    async def wait_version(self, group: str, version: int, timeout_s: float) -> bool:
        """Wait until this API has read (and indexed) ``version`` of ``group``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._current.get(group, -1) < version:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def reconcile(self, page: int = 10_000) -> dict[str, int]:
        """Make the index hold exactly the current versions' items: the rebuild.

        Reading the log re-upserts every current item; this removes points the
        log no longer accounts for (a store that missed deletes, or a wiped log).
        Raises :class:`StoreError` while a version's indexing is still failing: the
        index would not hold every current item, so it is not rebuilt yet.
        """
        if self._unindexed:
            raise StoreError(
                f"the index is behind for {len(self._unindexed)} groups (indexing failed; "
                "retried with backoff): try again once the store answers"
            )
        wanted = {
            item["item_id"]
            for group in self._current
            for item in (self.snapshot(group) or {"items": []})["items"]
            if item["status"] in INDEXED_STATUSES
        }
        existing = await self.store.scroll(self.collection, limit=page)
        stale = [point.id for point in existing if point.id not in wanted]
        if stale:
            await self.store.delete(self.collection, ids=stale)
        return {"indexed": len(wanted), "removed": len(stale)}

    # --- reads
    def groups(self) -> list[str]:
        return sorted(self._current)

    def current_version(self, group: str) -> int | None:
        return self._current.get(group)

    def snapshot(self, group: str, version: int | None = None) -> Snapshot | None:
        """A version (the current one by default): parsed if recent, else decompressed."""
        history = self._history.get(group)
        if history is None:
            return None
        wanted = self._current[group] if version is None else version
        recent = history.recent.get(wanted)
        return recent if recent is not None else self._older(group, history, wanted)

    def _older(self, group: str, history: GroupHistory, version: int) -> Snapshot | None:
        """An older version, from the cache of parsed ones or decompressed into it."""
        key = (group, version)
        cached = self._old.get(key)
        if cached is not None:
            self._old.move_to_end(key)
            return cached
        packed = history.packed.get(version)
        if packed is None:
            return None
        parsed: Snapshot = orjson.loads(zlib.decompress(self._archive.get(packed)))
        self._old[key] = parsed
        while len(self._old) > OLD_PARSED_CACHE:
            evicted, _ = self._old.popitem(last=False)
            self._unparsed(evicted)
        return parsed

    def headers(self, group: str) -> list[VersionHeader]:
        """Every version's header, oldest first: the versions list without decompressing."""
        history = self._history.get(group)
        return [history.headers[v] for v in sorted(history.headers)] if history else []

    def partition_of(self, group: str) -> int | None:
        """The versions topic's partition where ``group``'s versions are (None: unknown)."""
        history = self._history.get(group)
        return None if history is None else history.partition

    def forgotten(self, group: str) -> Mapping[str, int]:
        """Users a forget_user version removed, with the first such version (empty: none)."""
        history = self._history.get(group)
        return first_forgetting(history.removed) if history else {}

    def item(self, group: str, version: int, item_id: str) -> MemoryItem | None:
        """One item of a version, by id, through an index built on first use.

        Context requests look up every search hit; a dict per (immutable) version
        saves scanning the group's items each time. Dropped when the version is
        re-read, stops being current, or is no longer kept parsed.
        """
        index = self._by_id.get((group, version))
        if index is None:
            snapshot = self.snapshot(group, version)
            if snapshot is None:
                return None
            index = self._by_id[(group, version)] = {i["item_id"]: i for i in snapshot["items"]}
        return index.get(item_id)

    def cheapest_example(self, group: str, version: int) -> int | None:
        """Tokens of the smallest active example of a version (None: it has none), cached."""
        key = (group, version)
        if key not in self._cheapest:
            snapshot = self.snapshot(group, version)
            costs = [
                i["tokens"]
                for i in (snapshot["items"] if snapshot else ())
                if i["kind"] in EXAMPLE_KINDS and i["status"] == "active"
            ]
            self._cheapest[key] = min(costs, default=None)
        return self._cheapest[key]


INDEX_RETRY_FIRST_S = 0.5
"""Wait before retrying a failed index write; doubled per failure up to INDEX_RETRY_MAX_S."""
INDEX_RETRY_MAX_S = 30.0

SETTLE_AFTER_ITEMS = 20_000
"""Once caught up, settle the heap after this many items read (about 100 snapshots of
200 items): each settle is a full collection of what is not frozen yet (~20-40 ms), so
not one per new version; what waits in between adds ~5 ms to a full collection."""


def _settle_heap() -> None:
    """Take the snapshots just read out of the cyclic garbage collector's sight.

    Why: this process holds the recent versions of every group parsed, millions of
    small dicts and lists (885,000 objects at 1,000 groups x 200 items). CPython's full
    collection walks them all, measured at ~500 ms here, and it strikes whichever
    request happens to allocate at that moment: a p99.9 of half a second. The
    snapshots are JSON trees with no reference cycles, freed by reference counting
    when dropped, so the collector has nothing to find in them. Collect first so
    that garbage cycles already made are freed rather than frozen; after the first
    freeze that collection only walks the objects made since, so it stays cheap.
    """
    gc.collect()
    gc.freeze()
