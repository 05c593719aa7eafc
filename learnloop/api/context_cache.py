"""A bounded cache of assembled prefixes, so a context request does not rebuild its rules.

Why it is safe: a prefix (:func:`processors.context.assemble_prefix`) is a pure
function of the snapshots it is built from and the token budget. Snapshots are
immutable and named by ``(group, version)``: any change to a group's memory is a
new version, hence a new key, so an entry can never go stale, and the old keys
simply age out of the LRU.

Why it cannot leak across tenants: the key is taken *after* the request has been
authorised and its groups filtered to those the caller may see, and it is exactly
the selection the prefix is built from (every group and version, in order) plus
the budget. Two callers share an entry only if they were both allowed to read
exactly the same snapshots, in which case they are owed the same bytes. As a
second guard, a hit also requires the very snapshot objects the entry was built
from (identity), so a log that re-delivered a version with other content would
miss instead of serving the old text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from learnloop import metrics
from processors.context import ConflictKeys, assemble_prefix, pick_examples
from processors.memory import MemoryItem, Snapshot

Key = tuple[tuple[tuple[str, int], ...], int]
_HIT = metrics.CONTEXT_PREFIX_CACHE.labels("hit")
_MISS = metrics.CONTEXT_PREFIX_CACHE.labels("miss")


MAX_CHARS = 64_000_000
"""Upper bound on the text held (prefixes and their JSON), whatever the budgets (~64 MB)."""


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """An assembled prefix, with its rule lists kept as serialised JSON.

    Why JSON: a prefix of 3 groups carries ~150 small dicts (chosen and dropped
    rules); thousands of cached entries would be hundreds of thousands of objects
    for the garbage collector to walk on every full collection (measured at 60 ms).
    Bytes are not tracked, and they go into the answer without re-serialising.
    """

    prefix: str
    versions: dict[str, int]
    budget_left: int
    items: int
    items_json: orjson.Fragment
    dropped_json: orjson.Fragment
    size: int

    @classmethod
    def build(
        cls,
        snapshots: Mapping[str, Snapshot],
        max_tokens: int,
        conflicts: Callable[[MemoryItem, MemoryItem], bool],
        keys: ConflictKeys | None,
    ) -> CachedPrefix:
        built = assemble_prefix(snapshots, max_tokens, conflicts, keys)
        items, dropped = orjson.dumps(built["items"]), orjson.dumps(built["dropped"])
        return cls(
            built["prefix"],
            built["versions"],
            built["budget_left"],
            len(built["items"]),
            orjson.Fragment(items),
            orjson.Fragment(dropped),
            len(built["prefix"]) + len(items) + len(dropped),
        )

    def context(
        self,
        examples: Sequence[tuple[float, MemoryItem]],
        max_tokens: int,
        max_examples: int = 4,
    ) -> dict[str, Any]:
        """The answer's context fields, in the order of :class:`processors.context.Context`:
        ``orjson.dumps`` of it gives the same bytes as of ``assemble(...)``."""
        picked, left = pick_examples(self.versions, self.budget_left, examples, max_examples)
        return {
            "prefix": self.prefix,
            "examples": picked,
            "versions": self.versions,
            "items": self.items_json,
            "dropped": self.dropped_json,
            "tokens": max_tokens - left,
        }


class PrefixCache:
    """LRU of ``(selection, max_tokens) -> CachedPrefix``: at most ``entries`` of them
    (0: off) and at most ``max_chars`` characters of text in all."""

    def __init__(
        self,
        entries: int,
        conflicts: Callable[[MemoryItem, MemoryItem], bool],
        max_chars: int = MAX_CHARS,
        keys: ConflictKeys | None = None,
    ) -> None:
        self._entries = entries
        self._keys = keys
        self._max_chars = max_chars
        self._chars = 0
        self._conflicts = conflicts
        self._cache: OrderedDict[Key, tuple[tuple[Snapshot, ...], CachedPrefix]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def prefix(self, snapshots: Mapping[str, Snapshot], max_tokens: int) -> CachedPrefix:
        """The prefix for these snapshots and budget."""
        if self._entries <= 0:
            return CachedPrefix.build(snapshots, max_tokens, self._conflicts, self._keys)
        groups = sorted(snapshots)
        key: Key = (tuple((g, snapshots[g]["version"]) for g in groups), max_tokens)
        sources = tuple(snapshots[g] for g in groups)
        found = self._cache.get(key)
        if found is not None and all(a is b for a, b in zip(found[0], sources, strict=True)):
            self._cache.move_to_end(key)
            _HIT.inc()
            return found[1]
        _MISS.inc()
        built = CachedPrefix.build(snapshots, max_tokens, self._conflicts, self._keys)
        if found is not None:
            self._forget(key)
        self._cache[key] = (sources, built)
        self._chars += built.size
        while len(self._cache) > self._entries or self._chars > self._max_chars:
            self._forget(next(iter(self._cache)))
        return built

    def _forget(self, key: Key) -> None:
        self._chars -= self._cache.pop(key)[1].size
