"""VectorStore on Qdrant Edge (``qdrant-edge-py``): Qdrant's engine, in-process.

Why this adapter exists: ``learnloop up`` must work with no server to run. Each
collection is one ``EdgeShard`` in its own directory under the store root.

Edge calls are synchronous, so they run directly on the event loop (a search
filtered to one group takes 0.1-0.5 ms); a worker thread would not help, as
``optimize()`` at least holds the GIL throughout. Large upserts and scrolls are
cut into chunks with a yield in between, so one big batch does not stall the
HTTP API. One lock serialises shard calls because the store may be shared by
threads and opening/closing a shard must not race a query.

Edge has no background optimiser: points stay in an appendable, brute-force
segment until :meth:`EdgeVectorStore.optimize` builds HNSW and vacuums deletes.
The keyword payload indexes keep a search inside one group fast regardless.

Each shard searches on a pool of ``search_threads`` threads (edge's own default is
derived from the CPU count: 8 on two cores). learnloop's searches are filtered to a
few groups in one segment, so there is nothing to split, and handing each search to
one of 8 threads costs more than it saves: one group among 200,000 points, through
this adapter, took 0.19-0.25 ms of process CPU with one thread against 0.35-0.43 ms
with edge's default, and p50 0.14-0.21 ms against 0.26-0.28 ms (two runs of
``benchmarks/store_bench.py --points 200000 --groups 1000 --edge-search-threads 1,default``;
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import qdrant_edge as qe

from learnloop.store.port import (
    Hit,
    Match,
    Point,
    StoreError,
    Where,
    check_collection_name,
    check_limit,
    check_point_id,
    parse_where,
)

if TYPE_CHECKING:
    from qdrant_edge import ConditionType

__all__ = ["EdgeVectorStore"]

_T = TypeVar("_T")

_UPSERT_CHUNK = 512
_SCROLL_PAGE = 1024


class EdgeVectorStore:
    """One EdgeShard per collection under ``path`` (a temporary dir when None).

    ``search_threads``: each shard's search pool (None: edge's CPU-derived default).
    """

    def __init__(self, path: Path | None, search_threads: int | None = 1) -> None:
        if search_threads is not None and search_threads < 1:
            raise ValueError(f"search_threads must be at least 1, got {search_threads!r}")
        self._search_threads = search_threads
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="learnloop-edge-")
            self._root = Path(self._tmp.name)
        else:
            self._root = Path(path)
            self._root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}
        # Dim each open shard was validated against; None if opened lazily, unchecked.
        self._dims: dict[str, int | None] = {}
        self._lock = threading.RLock()
        self._closed = False

    @property
    def path(self) -> Path:
        """Root directory holding one sub-directory per collection."""
        return self._root

    async def ensure_collection(self, name: str, dim: int, keyword_fields: Sequence[str]) -> None:
        """Create or open the shard, check its dim, add missing keyword indexes."""
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        fields = _check_fields(keyword_fields)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            max_search_threads=self._search_threads,
        )
        with self._lock:
            self._check_open()
            if name in self._shards:
                known = self._dims[name]
                if known is None:
                    # Opened lazily without a config: reopen with one so edge checks the dim.
                    self._call(f"close {name}", self._shards.pop(name).close)
                    del self._dims[name]
                elif known != dim:
                    raise StoreError(f"collection {name!r} has dim {known}, not {dim}")
            if name not in self._shards:
                directory = self._dir(name)
                # load() with a config fails if the stored vectors are incompatible.
                opener = qe.EdgeShard.load if directory.is_dir() else qe.EdgeShard.create
                shard = self._call(f"open {name}", opener, str(directory), config)
                self._shards[name] = shard
                self._dims[name] = dim
            shard = self._shards[name]
            schema = self._call(f"info {name}", shard.info).payload_schema
            for field in fields:
                existing = schema.get(field)
                if existing is None:
                    op = qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
                    self._call(f"index {name}.{field}", shard.update, op)
                elif existing.data_type != qe.PayloadSchemaType.Keyword:
                    raise StoreError(
                        f"{name}.{field} is already indexed as {existing.data_type}, not keyword"
                    )

    async def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Upsert in chunks, yielding between them; replays are harmless (by id).

        All ids are checked before anything is written; an empty batch is a no-op.
        """
        check_collection_name(collection)
        for point in points:
            check_point_id(point.id)
        for start in range(0, len(points), _UPSERT_CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = [
                qe.Point(p.id, [float(x) for x in p.vector], dict(p.payload))
                for p in points[start : start + _UPSERT_CHUNK]
            ]
            op = qe.UpdateOperation.upsert_points(chunk)
            with self._lock:
                shard = self._shard(collection)
                self._call(f"upsert {collection}", shard.update, op)

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        where: Where | None = None,
        limit: int = 10,
        with_payload: bool = True,
    ) -> list[Hit]:
        """Exact within a group via the keyword index; brute force or HNSW otherwise."""
        check_collection_name(collection)
        check_limit(limit)
        # Edge takes any real numbers (ints too) and refuses anything else, so a list
        # goes in as it is: converting 384 floats to floats cost ~8 us per search.
        request = qe.SearchRequest(
            query=qe.Query.Nearest(vector if isinstance(vector, list) else list(vector)),
            limit=limit,
            filter=_filter(parse_where(where)),
            with_payload=with_payload,
            with_vector=False,
        )
        with self._lock:
            shard = self._shard(collection)
            found = self._call(f"search {collection}", shard.search, request)
        hits = [Hit(str(p.id), p.score, dict(p.payload) if p.payload else {}) for p in found]
        hits.sort(key=lambda h: (-h.score, h.id))  # ties in a stable order on every backend
        return hits

    async def scroll(
        self, collection: str, *, where: Where | None = None, limit: int = 1000
    ) -> list[Point]:
        """Page through matching points in id order (edge merges segments by id)."""
        check_collection_name(collection)
        check_limit(limit)
        flt = _filter(parse_where(where))
        out: list[Point] = []
        offset: qe.PointId | None = None
        while len(out) < limit:
            request = qe.ScrollRequest(
                offset=offset,
                limit=min(limit - len(out), _SCROLL_PAGE),
                filter=flt,
                with_payload=True,
                with_vector=True,
            )
            with self._lock:
                shard = self._shard(collection)
                records, offset = self._call(f"scroll {collection}", shard.scroll, request)
            out.extend(Point(str(r.id), _dense(r.vector), dict(r.payload or {})) for r in records)
            if offset is None:
                break
            await asyncio.sleep(0)
        return out

    async def delete(
        self,
        collection: str,
        *,
        ids: Sequence[str] | None = None,
        where: Where | None = None,
    ) -> None:
        """Delete by ids, by filter, or both (intersection); never the whole collection."""
        check_collection_name(collection)
        terms = parse_where(where)
        if ids is None and not terms:
            raise ValueError("delete needs ids or a non-empty where; refusing to delete all")
        id_list = [check_point_id(i) for i in ids] if ids is not None else None
        if id_list is not None and not id_list:
            return  # nothing can match an empty id list
        if id_list is not None and not terms:
            op = qe.UpdateOperation.delete_points(list(id_list))
        else:
            must = _conditions(terms)
            if id_list is not None:
                must.append(qe.HasIdCondition(set(id_list)))
            op = qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=must))
        with self._lock:
            shard = self._shard(collection)
            self._call(f"delete {collection}", shard.update, op)

    async def count(self, collection: str, *, where: Where | None = None) -> int:
        """Exact count, so stats and tests can rely on it."""
        check_collection_name(collection)
        request = qe.CountRequest(exact=True, filter=_filter(parse_where(where)))
        with self._lock:
            shard = self._shard(collection)
            return int(self._call(f"count {collection}", shard.count, request))

    async def ping(self) -> bool:
        """Edge is in-process: ready while open and its directory still exists."""
        return not self._closed and self._root.is_dir()

    async def optimize(self, collection: str) -> bool:
        """Build HNSW and vacuum deleted points; True if anything changed.

        Blocks the calling thread *and* holds the GIL for the whole run (about 4 s
        for 20k x 384-d points, 100 s for 200k on two cores), so call it from a
        maintenance path, never from a request handler.
        """
        check_collection_name(collection)
        with self._lock:
            shard = self._shard(collection)
            return bool(self._call(f"optimize {collection}", shard.optimize))

    async def close(self) -> None:
        """Flush and close every shard; remove the temporary directory if we made it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            first_error: StoreError | None = None
            for name, shard in self._shards.items():
                try:
                    self._call(f"flush {name}", shard.flush)
                    self._call(f"close {name}", shard.close)
                except StoreError as exc:
                    first_error = first_error or exc
            self._shards.clear()
            self._dims.clear()
            if self._tmp is not None:
                self._tmp.cleanup()
            if first_error is not None:
                raise first_error

    def _dir(self, name: str) -> Path:
        return self._root / name

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("edge store is closed")

    def _shard(self, name: str) -> qe.EdgeShard:
        """The open shard, loading one left on disk by an earlier process on first use."""
        self._check_open()
        shard = self._shards.get(name)
        if shard is None:
            directory = self._dir(name)
            if not directory.is_dir():
                raise StoreError(f"collection {name!r} does not exist")
            shard = self._call(f"open {name}", qe.EdgeShard.load, str(directory))
            self._shards[name] = shard
            self._dims[name] = None
        return shard

    @staticmethod
    def _call(what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Edge raises bare ``Exception``/``ValueError``; give callers one type to catch."""
        try:
            return fn(*args)
        except Exception as exc:
            raise StoreError(f"qdrant-edge: {what} failed: {exc}") from exc


def _check_fields(keyword_fields: Sequence[str]) -> list[str]:
    if isinstance(keyword_fields, str):
        raise ValueError("keyword_fields must be a sequence of names, not one string")
    fields = list(keyword_fields)
    for field in fields:
        if not isinstance(field, str) or not field:
            raise ValueError(f"keyword field names must be non-empty strings, got {field!r}")
    return fields


def _conditions(terms: Sequence[Match]) -> list[ConditionType]:
    conditions: list[ConditionType] = []
    for term in terms:
        match: qe.MatchValue | qe.MatchAny
        if isinstance(term.value, tuple):
            match = qe.MatchAny(list(term.value))
        else:
            match = qe.MatchValue(term.value)
        conditions.append(qe.FieldCondition(term.key, match=match))
    return conditions


@lru_cache(maxsize=4096)
def _filter(terms: tuple[Match, ...]) -> qe.Filter | None:
    """Cached: a context search asks for the same few facets per caller, and building
    the native condition objects cost about as much as a third of the search itself.
    Edge copies a filter into each request, so one object serves many searches (the
    contract tests search many times through the same cached filter)."""
    return qe.Filter(must=_conditions(terms)) if terms else None


def _dense(vector: object) -> list[float]:
    """The default (unnamed) dense vector of a record."""
    if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
        raise StoreError(f"expected a dense vector, got {type(vector).__name__}")
    return [float(x) for x in vector]
