"""The prefix cache: same bytes as assembling afresh, keyed by exactly what was selected."""

from __future__ import annotations

import copy
import gc

import orjson

from learnloop.api.context_cache import PrefixCache
from processors.context import assemble
from processors.memory import MemoryItem
from processors.memory_ops import next_snapshot
from tests.unit.test_memory_ops import item, snap


def never(_: MemoryItem, __: MemoryItem) -> bool:
    return False


def answer(prefix_cache: PrefixCache, snapshots, max_tokens: int = 800, examples=()) -> dict:
    """The context as an agent reads it (JSON), through the cache."""
    return orjson.loads(orjson.dumps(prefix_cache.prefix(snapshots, max_tokens).context(
        list(examples), max_tokens)))


def fresh(snapshots, max_tokens: int = 800, examples=()) -> dict:
    return orjson.loads(orjson.dumps(assemble(snapshots, list(examples), max_tokens, never)))


ALICE = {"user:alice": snap(item("user:alice", "Answer in German."), group="user:alice")}
TEAM = {"team:a": snap(item("team:a", "Use the v2 API."))}


def test_a_hit_is_byte_identical_to_assembling_afresh() -> None:
    cache = PrefixCache(16, never)
    snapshots = {**ALICE, **TEAM}
    first = answer(cache, snapshots)
    second = answer(cache, dict(reversed(list(snapshots.items()))))
    assert len(cache) == 1  # the second request was a hit
    assert first == second == fresh(snapshots)
    cached = cache.prefix(snapshots, 800).context([], 800)
    assert orjson.dumps(cached) == orjson.dumps(assemble(snapshots, [], 800, never))  # same bytes


def test_the_key_is_the_selection_and_the_budget() -> None:
    cache = PrefixCache(16, never)
    both = answer(cache, {**ALICE, **TEAM})
    only_team = answer(cache, TEAM)  # e.g. a key that may not see user:alice
    assert "German" in both["prefix"] and "German" not in only_team["prefix"]
    small = answer(cache, TEAM, max_tokens=20)
    assert small["prefix"] != only_team["prefix"] or small["tokens"] != only_team["tokens"]
    assert len(cache) == 3


def test_a_new_version_is_a_new_key() -> None:
    cache = PrefixCache(16, never)
    before = answer(cache, TEAM)
    newer = next_snapshot(TEAM["team:a"], [item("team:a", "Use the v3 API.")], "edit", 20)
    after = answer(cache, {"team:a": newer})
    assert "v2" in before["prefix"] and "v3" in after["prefix"] and "v2" not in after["prefix"]
    assert after["versions"] == {"team:a": newer["version"]}


def test_same_version_with_other_content_is_not_served_from_the_cache() -> None:
    cache = PrefixCache(16, never)
    answer(cache, TEAM)
    impostor = copy.deepcopy(TEAM["team:a"])
    impostor["items"][0]["text"] = "Use the v9 API."
    assert "v9" in answer(cache, {"team:a": impostor})["prefix"]


def test_entries_and_characters_are_bounded() -> None:
    cache = PrefixCache(2, never)
    for n in range(5):
        answer(cache, TEAM, max_tokens=100 + n)
    assert len(cache) == 2
    tiny = PrefixCache(100, never, max_chars=10)
    assert "v2" in answer(tiny, TEAM)["prefix"]  # still answered, just not kept
    assert len(tiny) == 0


def test_zero_entries_turns_it_off() -> None:
    cache = PrefixCache(0, never)
    assert answer(cache, TEAM) == fresh(TEAM)
    assert len(cache) == 0


def test_examples_fill_what_the_cached_rules_leave() -> None:
    example = item("team:a", "Like this.", kind="preferred_example")
    snapshots = {
        "team:a": next_snapshot(
            TEAM["team:a"], [*TEAM["team:a"]["items"], example], "synthesis", 20
        )
    }
    cache = PrefixCache(16, never)
    for _ in range(2):  # a miss, then a hit: the cached entry is not changed by use
        got = answer(cache, snapshots, examples=[(0.9, example)])
        assert [e["item_id"] for e in got["examples"]] == [example["item_id"]]
        assert got == fresh(snapshots, examples=[(0.9, example)])
    assert answer(cache, snapshots) == fresh(snapshots)


def test_cached_entries_hold_few_objects_for_the_collector() -> None:
    many = {"team:a": snap(*(item("team:a", f"Rule {n} about topic {n}.") for n in range(60)))}
    entry = PrefixCache(16, never).prefix(many, 4000)
    assert entry.items == 60
    assert not gc.is_tracked(entry.items_json) and not gc.is_tracked(entry.dropped_json)
