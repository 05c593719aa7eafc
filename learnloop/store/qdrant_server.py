"""VectorStore on a Qdrant server through ``qdrant_client.AsyncQdrantClient``.

Why: production runs several workers and API replicas against one shared Qdrant,
which the in-process edge engine cannot serve. Every call is bounded by
``timeout_s`` (also across client retries) and every client failure becomes a
:class:`StoreError`, so callers handle one type. Writes use ``wait=True`` so a
memory published by the worker is visible to the next API read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

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

__all__ = ["QdrantServerStore"]

# Keeps one upsert request at a few MB for 384-d vectors.
_UPSERT_CHUNK = 256
_SCROLL_PAGE = 1000


class QdrantServerStore:
    """Production adapter for a Qdrant server at ``url``."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        # The client takes whole seconds; our own asyncio.timeout enforces the exact bound.
        client = AsyncQdrantClient(url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s)))
        self._setup(client, timeout_s)

    @classmethod
    def from_client(
        cls, client: AsyncQdrantClient, *, timeout_s: float = 10.0
    ) -> QdrantServerStore:
        """Wrap an existing client; the store closes it.

        Tests pass ``AsyncQdrantClient(location=":memory:")``. That is qdrant-client's
        *local mode*, a pure-Python re-implementation behind the same client API, not
        a server: it makes the same calls as production, but it ignores payload
        indexes (and warns about them) and has none of the server's performance.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        store = cls.__new__(cls)
        store._setup(client, timeout_s)
        return store

    def _setup(self, client: AsyncQdrantClient, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._closed = False

    async def ensure_collection(self, name: str, dim: int, keyword_fields: Sequence[str]) -> None:
        """Create if missing (tolerating a concurrent creator), check dim, add keyword indexes."""
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(keyword_fields, str):
            raise ValueError("keyword_fields must be a sequence of names, not one string")
        fields = list(keyword_fields)
        if not all(isinstance(f, str) and f for f in fields):
            raise ValueError(f"keyword field names must be non-empty strings, got {fields!r}")
        params = qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
        async with self._guard(f"ensure {name}"):
            if not await self._client.collection_exists(name):
                try:
                    await self._client.create_collection(name, vectors_config=params)
                except Exception:
                    # Another worker may have created it between our check and create.
                    if not await self._client.collection_exists(name):
                        raise
            info = await self._client.get_collection(name)
        vectors = info.config.params.vectors
        if not isinstance(vectors, qm.VectorParams):
            raise StoreError(f"collection {name!r} uses named vectors; expected one unnamed vector")
        if vectors.size != dim or vectors.distance != qm.Distance.COSINE:
            raise StoreError(
                f"collection {name!r} has dim {vectors.size} ({vectors.distance.value}), "
                f"not {dim} (Cosine)"
            )
        schema = info.payload_schema or {}
        for field in fields:
            existing = schema.get(field)
            if existing is None:
                async with self._guard(f"index {name}.{field}"):
                    await self._client.create_payload_index(
                        name, field, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
                    )
            elif existing.data_type != qm.PayloadSchemaType.KEYWORD:
                raise StoreError(
                    f"{name}.{field} is already indexed as {existing.data_type}, not keyword"
                )

    async def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Upsert in bounded requests; ids are checked before anything is sent."""
        check_collection_name(collection)
        for point in points:
            check_point_id(point.id)
        for start in range(0, len(points), _UPSERT_CHUNK):
            chunk = [
                qm.PointStruct(
                    id=p.id, vector=[float(x) for x in p.vector], payload=dict(p.payload)
                )
                for p in points[start : start + _UPSERT_CHUNK]
            ]
            async with self._guard(f"upsert {collection}"):
                await self._client.upsert(collection, points=chunk, wait=True)

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        where: Where | None = None,
        limit: int = 10,
        with_payload: bool = True,
    ) -> list[Hit]:
        """``query_points`` with a nearest-vector query; ties ordered by id."""
        check_collection_name(collection)
        check_limit(limit)
        flt = _filter(parse_where(where))
        async with self._guard(f"search {collection}"):
            response = await self._client.query_points(
                collection,
                query=[float(x) for x in vector],
                query_filter=flt,
                limit=limit,
                with_payload=with_payload,
                with_vectors=False,
            )
        hits = [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits

    async def scroll(
        self, collection: str, *, where: Where | None = None, limit: int = 1000
    ) -> list[Point]:
        """Pages of ``scroll``; Qdrant returns points in id order."""
        check_collection_name(collection)
        check_limit(limit)
        flt = _filter(parse_where(where))
        out: list[Point] = []
        offset: qm.ExtendedPointId | None = None
        while len(out) < limit:
            async with self._guard(f"scroll {collection}"):
                records, next_offset = await self._client.scroll(
                    collection,
                    scroll_filter=flt,
                    limit=min(limit - len(out), _SCROLL_PAGE),
                    offset=offset,
                    with_payload=True,
                    with_vectors=True,
                )
            out.extend(Point(str(r.id), _dense(r.vector), dict(r.payload or {})) for r in records)
            if next_offset is None:
                break
            if not isinstance(next_offset, int | str):
                raise StoreError(f"unexpected scroll offset type {type(next_offset).__name__}")
            offset = next_offset
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
        id_list: list[qm.ExtendedPointId] | None = (
            [check_point_id(i) for i in ids] if ids is not None else None
        )
        if id_list is not None and not id_list:
            return  # nothing can match an empty id list
        selector: qm.PointIdsList | qm.FilterSelector
        if id_list is not None and not terms:
            selector = qm.PointIdsList(points=id_list)
        else:
            must = _conditions(terms)
            if id_list is not None:
                must.append(qm.HasIdCondition(has_id=id_list))
            selector = qm.FilterSelector(filter=qm.Filter(must=must))
        async with self._guard(f"delete {collection}"):
            await self._client.delete(collection, points_selector=selector, wait=True)

    async def count(self, collection: str, *, where: Where | None = None) -> int:
        """Exact count (the server's estimate would make stats drift)."""
        check_collection_name(collection)
        flt = _filter(parse_where(where))
        async with self._guard(f"count {collection}"):
            result = await self._client.count(collection, count_filter=flt, exact=True)
        return int(result.count)

    async def ping(self) -> bool:
        """List collections: proves the server answers and the API key is accepted."""
        if self._closed:
            return False
        try:
            async with self._guard("ping"):
                await self._client.get_collections()
        except StoreError:
            return False
        return True

    async def close(self) -> None:
        """Close the client's connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.close()
        except Exception as exc:
            raise StoreError(f"qdrant: close failed: {exc}") from exc

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Bound the call by ``timeout_s`` and turn any client failure into StoreError."""
        if self._closed:
            raise StoreError("qdrant store is closed")
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except StoreError:
            raise
        except TimeoutError as exc:
            raise StoreError(f"qdrant: {what} timed out after {self._timeout_s}s") from exc
        except Exception as exc:
            raise StoreError(f"qdrant: {what} failed: {exc}") from exc


def _conditions(terms: Sequence[Match]) -> list[qm.Condition]:
    conditions: list[qm.Condition] = []
    for term in terms:
        match: qm.MatchValue | qm.MatchAny
        if isinstance(term.value, tuple):
            match = qm.MatchAny(any=list(term.value))
        else:
            match = qm.MatchValue(value=term.value)
        conditions.append(qm.FieldCondition(key=term.key, match=match))
    return conditions


def _filter(terms: Sequence[Match]) -> qm.Filter | None:
    return qm.Filter(must=_conditions(terms)) if terms else None


def _dense(vector: object) -> list[float]:
    """The default (unnamed) dense vector of a record."""
    if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
        raise StoreError(f"expected a dense vector, got {type(vector).__name__}")
    return [float(x) for x in vector]
