"""The vector-store port: the little learnloop needs from a vector index.

The HTTP API and the stream worker talk to :class:`VectorStore` only, so the
same code runs on the in-process engine (``learnloop up``) and on a Qdrant
server. Both adapters validate their inputs with the helpers below so that a
filter or an id means exactly the same thing on either of them; that matters
more than usual here because the ``group`` filter is the tenant boundary.

Errors: a backend that fails, times out or lacks a collection raises
:class:`StoreError`; arguments that could never work (a non-UUID id, a bool
filter value, ``limit < 1``) raise :class:`ValueError` before any I/O.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from learnloop.errors import StoreError

__all__ = [
    "Hit",
    "Match",
    "Point",
    "StoreError",
    "VectorStore",
    "Where",
    "WhereValue",
    "check_collection_name",
    "check_limit",
    "check_point_id",
    "parse_where",
]

WhereValue: TypeAlias = str | int | Sequence[str]
"""A ``str``/``int`` means equality, a sequence of strings means any-of."""

Where: TypeAlias = Mapping[str, WhereValue]
"""Payload key -> value; all terms must hold (AND)."""

# Edge keeps one directory per collection, so names must be safe path parts too.
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Point:
    """One memory item or example in the index.

    ``id`` is a canonical (lowercase) UUID string so that ids read back compare
    equal to ids written; callers derive it with ``uuid5``. Vectors read back
    from a cosine collection are unit-normalised, because both engines store
    them that way.
    """

    id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result; ``score`` is the cosine similarity, higher is closer."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Match:
    """One validated ``where`` term, so both adapters build the same filter.

    ``value`` is a tuple for an any-of term; an empty tuple matches nothing.
    """

    key: str
    value: str | int | tuple[str, ...]


@runtime_checkable
class VectorStore(Protocol):
    """What learnloop needs from a vector index; async because callers are asyncio."""

    async def ensure_collection(self, name: str, dim: int, keyword_fields: Sequence[str]) -> None:
        """Create the collection (cosine, ``dim``) and keyword indexes; idempotent."""
        ...

    async def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Insert or replace points by id; replaying a batch is harmless."""
        ...

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        where: Where | None = None,
        limit: int = 10,
        with_payload: bool = True,
    ) -> list[Hit]:
        """Nearest points by cosine similarity among those matching ``where``.

        ``with_payload=False`` leaves each hit's payload empty: cheaper when the
        caller only needs ids and scores.
        """
        ...

    async def scroll(
        self, collection: str, *, where: Where | None = None, limit: int = 1000
    ) -> list[Point]:
        """Matching points ordered by id, so repeated reads see the same sequence."""
        ...

    async def delete(
        self,
        collection: str,
        *,
        ids: Sequence[str] | None = None,
        where: Where | None = None,
    ) -> None:
        """Delete by ids, by filter, or ids that also match the filter (both given)."""
        ...

    async def count(self, collection: str, *, where: Where | None = None) -> int:
        """Exact number of points matching ``where``."""
        ...

    async def ping(self) -> bool:
        """True if the store can serve requests; backs ``/readyz``."""
        ...

    async def close(self) -> None:
        """Release the backend; idempotent."""
        ...


def check_collection_name(name: str) -> str:
    """Reject names that are not portable (edge turns them into directory names)."""
    if not isinstance(name, str) or not _COLLECTION_RE.fullmatch(name):
        raise ValueError(
            f"collection name {name!r} must be 1-63 characters of [A-Za-z0-9_-], "
            "starting with a letter or digit"
        )
    return name


def check_point_id(point_id: str) -> str:
    """Require a canonical UUID string: the engines canonicalise ids, so others would not
    round-trip (an upper-case id would come back lower-case and miss a dict lookup)."""
    if not isinstance(point_id, str):
        raise ValueError(f"point id must be a UUID string, got {type(point_id).__name__}")
    try:
        canonical = str(uuid.UUID(point_id))
    except ValueError:
        raise ValueError(f"point id {point_id!r} is not a UUID") from None
    if canonical != point_id:
        raise ValueError(f"point id {point_id!r} is not canonical; use {canonical!r}")
    return point_id


def check_limit(limit: int) -> int:
    """Engines disagree on ``limit=0``; refuse it instead of guessing."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    return limit


def parse_where(where: Where | None) -> tuple[Match, ...]:
    """Validate a ``where`` mapping into terms; empty means "no filter".

    Bools are refused: qdrant_edge turns ``True`` into ``1`` and would match the
    wrong points, while a Qdrant server matches JSON ``true``.
    """
    if where is None:
        return ()
    if not isinstance(where, Mapping):
        raise ValueError(f"where must be a mapping, got {type(where).__name__}")
    terms: list[Match] = []
    for key, value in where.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"where keys must be non-empty strings, got {key!r}")
        if isinstance(value, bool):
            raise ValueError(f"where[{key!r}]: bool values are not supported")
        if isinstance(value, str | int):
            terms.append(Match(key, value))
        elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            items = tuple(value)
            if not all(isinstance(item, str) for item in items):
                raise ValueError(f"where[{key!r}]: any-of values must all be strings")
            terms.append(Match(key, items))
        else:
            raise ValueError(
                f"where[{key!r}]: expected str, int or a sequence of str, "
                f"got {type(value).__name__}"
            )
    return tuple(terms)
