"""One contract, two adapters: the edge engine and qdrant-client's local mode.

The local mode stands in for a Qdrant server (none can run here): it goes through
the same ``AsyncQdrantClient`` calls as production. Group isolation gets the most
tests because the ``group`` filter is the tenant boundary of the product.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from learnloop.store import Hit, Point, StoreError, VectorStore
from learnloop.store.edge import EdgeVectorStore
from learnloop.store.qdrant_server import QdrantServerStore

NS = uuid.UUID("6f1c52e4-5b8e-4a57-9d3e-2a4c1f0e9b11")
COLL = "memory"
DIM = 4
FIELDS = ("group", "kind", "status", "version")

# Local mode warns that it ignores payload indexes; expected there, and only there.
_LOCAL_MODE_INDEX_WARNING = pytest.mark.filterwarnings(
    "ignore:Payload indexes have no effect in the local Qdrant:UserWarning"
)


def pid(name: str) -> str:
    """Deterministic ids, as callers derive them."""
    return str(uuid.uuid5(NS, name))


def unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def point(name: str, vector: Sequence[float], **payload: object) -> Point:
    return Point(pid(name), list(vector), {"name": name, **payload})


def names(items: Sequence[Hit | Point]) -> list[str]:
    return [str(item.payload["name"]) for item in items]


@pytest.fixture(
    params=[
        pytest.param("edge", id="edge"),
        pytest.param("qdrant_local", id="qdrant-local", marks=_LOCAL_MODE_INDEX_WARNING),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    adapter: VectorStore
    if request.param == "edge":
        adapter = EdgeVectorStore(tmp_path / "edge")
    else:
        adapter = QdrantServerStore.from_client(AsyncQdrantClient(location=":memory:"))
    await adapter.ensure_collection(COLL, DIM, FIELDS)
    yield adapter
    await adapter.close()


def seeded(seed: int) -> random.Random:
    """Reproducible test data, not secrets."""
    return random.Random(seed)


def group_points(groups: Sequence[str], per_group: int, seed: int = 7) -> list[Point]:
    rng = seeded(seed)
    return [
        point(f"{group}#{i}", [rng.uniform(-1, 1) for _ in range(DIM)], group=group, kind="memory")
        for group in groups
        for i in range(per_group)
    ]


async def test_adapters_satisfy_the_protocol(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)
    assert await store.ping() is True


async def test_search_ranks_by_cosine_similarity(store: VectorStore) -> None:
    await store.upsert(
        COLL,
        [
            point("opposite", [-1, 0, 0, 0], group="g"),
            point("orthogonal", [0, 1, 0, 0], group="g"),
            point("close", [0.8, 0.6, 0, 0], group="g"),
            point("same-direction", [3, 0, 0, 0], group="g"),  # length must not matter
        ],
    )

    hits = await store.search(COLL, [1, 0, 0, 0], limit=10)

    assert names(hits) == ["same-direction", "close", "orthogonal", "opposite"]
    assert [h.score for h in hits] == pytest.approx([1.0, 0.8, 0.0, -1.0], abs=1e-5)
    assert hits[0].id == pid("same-direction")
    assert hits[0].payload == {"name": "same-direction", "group": "g"}
    top2 = await store.search(COLL, [1, 0, 0, 0], limit=2)
    assert names(top2) == ["same-direction", "close"]


async def test_search_without_payload_gives_the_same_ids_and_scores(store: VectorStore) -> None:
    await store.upsert(COLL, group_points(["user:alice", "user:bob"], per_group=6))
    query = [0.3, -0.2, 0.9, 0.1]
    full = await store.search(COLL, query, where={"group": ["user:alice"]}, limit=4)
    bare = await store.search(
        COLL, query, where={"group": ["user:alice"]}, limit=4, with_payload=False
    )
    assert [(h.id, h.score) for h in bare] == [(h.id, h.score) for h in full]
    assert all(h.payload == {} for h in bare) and all(h.payload for h in full)


async def test_group_filter_never_returns_another_groups_points(store: VectorStore) -> None:
    # "user:al" is a prefix of "user:alice": a keyword match must be exact.
    groups = ["user:alice", "user:al", "team:core", "global"]
    points = group_points(groups, per_group=12)
    await store.upsert(COLL, points)
    bait = next(p for p in points if p.payload["group"] == "user:al")
    alice_ids = {p.id for p in points if p.payload["group"] == "user:alice"}

    # Unfiltered, the nearest point belongs to another group ...
    unfiltered = await store.search(COLL, bait.vector, limit=1)
    assert unfiltered[0].id == bait.id
    # ... filtered, no other group's point ever comes back, however large the limit.
    hits = await store.search(COLL, bait.vector, where={"group": "user:alice"}, limit=100)
    assert {h.id for h in hits} == alice_ids
    assert {h.payload["group"] for h in hits} == {"user:alice"}
    scrolled = await store.scroll(COLL, where={"group": "user:alice"})
    assert {p.id for p in scrolled} == alice_ids
    assert await store.count(COLL, where={"group": "user:alice"}) == 12
    assert await store.count(COLL, where={"group": "user"}) == 0
    assert await store.search(COLL, bait.vector, where={"group": "nobody"}) == []


async def test_where_terms_combine_with_and(store: VectorStore) -> None:
    await store.upsert(
        COLL,
        [
            point("a-active", [1, 0, 0, 0], group="a", status="active"),
            point("a-retired", [1, 0.1, 0, 0], group="a", status="retired"),
            point("b-active", [1, 0.2, 0, 0], group="b", status="active"),
        ],
    )

    where = {"group": "a", "status": "active"}
    hits = await store.search(COLL, [1, 0, 0, 0], where=where)

    assert names(hits) == ["a-active"]
    assert await store.count(COLL, where=where) == 1
    assert names(await store.scroll(COLL, where={"status": "active"})) == sorted(
        ["a-active", "b-active"], key=pid
    )


async def test_any_of_filter(store: VectorStore) -> None:
    await store.upsert(COLL, group_points(["a", "b", "c"], per_group=3))

    hits = await store.search(COLL, [1, 1, 1, 1], where={"group": ["a", "c"]}, limit=50)

    assert sorted(h.payload["group"] for h in hits) == ["a"] * 3 + ["c"] * 3
    assert await store.count(COLL, where={"group": ("b",)}) == 3
    assert await store.count(COLL, where={"group": ["a", "b", "zzz"]}) == 6
    # An empty any-of set matches nothing, on every verb.
    assert await store.search(COLL, [1, 1, 1, 1], where={"group": []}) == []
    assert await store.scroll(COLL, where={"group": []}) == []
    assert await store.count(COLL, where={"group": []}) == 0


async def test_int_values_filter_on_a_keyword_field(store: VectorStore) -> None:
    await store.upsert(
        COLL,
        [point(f"v{i}", [1, i, 0, 0], group="g", version=i % 3) for i in range(9)],
    )

    assert await store.count(COLL, where={"version": 2}) == 3
    hits = await store.search(COLL, [1, 0, 0, 0], where={"group": "g", "version": 0})
    assert sorted(names(hits)) == ["v0", "v3", "v6"]
    assert await store.count(COLL, where={"version": "2"}) == 0  # types are not coerced


async def test_upsert_is_idempotent_by_id(store: VectorStore) -> None:
    batch = group_points(["a", "b"], per_group=5)
    await store.upsert(COLL, batch)
    await store.upsert(COLL, batch)  # a replayed batch after a worker restart
    assert await store.count(COLL) == 10

    await store.upsert(COLL, [point("a#0", [0, 0, 0, 2], group="a", kind="memory", rev=2)])

    assert await store.count(COLL) == 10
    hits = await store.search(COLL, [0, 0, 0, 1], where={"group": "a"}, limit=1)
    assert hits[0].id == pid("a#0")
    assert hits[0].payload["rev"] == 2
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    [stored] = [p for p in await store.scroll(COLL) if p.id == pid("a#0")]
    assert stored.vector == pytest.approx([0, 0, 0, 1], abs=1e-6)  # cosine stores unit vectors


async def test_delete_by_ids(store: VectorStore) -> None:
    await store.upsert(COLL, group_points(["a", "b"], per_group=3))

    await store.delete(COLL, ids=[pid("a#0"), pid("b#2"), pid("never-written")])

    left = {p.id for p in await store.scroll(COLL)}
    assert left == {pid(n) for n in ["a#1", "a#2", "b#0", "b#1"]}
    await store.delete(COLL, ids=[])  # nothing to do, not "everything"
    assert await store.count(COLL) == 4


async def test_delete_by_filter_only_touches_that_group(store: VectorStore) -> None:
    await store.upsert(COLL, group_points(["a", "b", "c"], per_group=4))

    await store.delete(COLL, where={"group": ["a", "c"]})

    assert await store.count(COLL) == 4
    assert {p.payload["group"] for p in await store.scroll(COLL)} == {"b"}


async def test_delete_with_ids_and_where_deletes_only_the_intersection(
    store: VectorStore,
) -> None:
    await store.upsert(COLL, group_points(["a", "b"], per_group=2))

    # A caller scoped to group "a" cannot delete "b"'s point even by naming its id.
    await store.delete(COLL, ids=[pid("a#0"), pid("b#0")], where={"group": "a"})

    assert sorted(names(await store.scroll(COLL))) == ["a#1", "b#0", "b#1"]


async def test_delete_refuses_to_delete_everything(store: VectorStore) -> None:
    await store.upsert(COLL, group_points(["a"], per_group=2))

    with pytest.raises(ValueError, match="refusing"):
        await store.delete(COLL)
    with pytest.raises(ValueError, match="refusing"):
        await store.delete(COLL, where={})
    assert await store.count(COLL) == 2


async def test_scroll_is_ordered_by_id_and_repeatable(store: VectorStore) -> None:
    batch = group_points(["a", "b"], per_group=20)
    seeded(3).shuffle(batch)
    await store.upsert(COLL, batch)

    first = await store.scroll(COLL)
    second = await store.scroll(COLL)

    ids = [p.id for p in first]
    assert ids == sorted(p.id for p in batch)
    assert first == second
    assert [p.id for p in await store.scroll(COLL, limit=7)] == ids[:7]
    in_b = await store.scroll(COLL, where={"group": "b"})
    assert [p.id for p in in_b] == sorted(p.id for p in batch if p.payload["group"] == "b")
    by_id = {p.id: p for p in batch}
    for got in first:
        assert got.payload == by_id[got.id].payload
        assert got.vector == pytest.approx(unit(by_id[got.id].vector), abs=1e-6)


async def test_scroll_pages_past_the_backend_page_size(store: VectorStore) -> None:
    batch = [point(f"p{i}", [1, i % 7, i % 5, 1], group=f"g{i % 3}") for i in range(2100)]
    await store.upsert(COLL, batch)  # also crosses the adapters' upsert chunk sizes
    expected = sorted(p.id for p in batch)

    assert [p.id for p in await store.scroll(COLL, limit=1500)] == expected[:1500]
    assert [p.id for p in await store.scroll(COLL, limit=5000)] == expected
    assert await store.count(COLL) == 2100
    assert await store.count(COLL, where={"group": "g1"}) == 700


async def test_count(store: VectorStore) -> None:
    assert await store.count(COLL) == 0
    await store.upsert(COLL, group_points(["a", "b"], per_group=3))
    assert await store.count(COLL) == 6
    assert await store.count(COLL, where={"group": "b"}) == 3
    assert await store.count(COLL, where={"group": "b", "kind": "example"}) == 0


async def test_ensure_collection_is_idempotent(store: VectorStore) -> None:
    await store.upsert(COLL, group_points(["a"], per_group=3))

    await store.ensure_collection(COLL, DIM, FIELDS)
    await store.ensure_collection(COLL, DIM, [*FIELDS, "source"])  # a field added later

    assert await store.count(COLL) == 3
    with pytest.raises(StoreError, match="dim"):
        await store.ensure_collection(COLL, DIM + 1, FIELDS)
    await store.ensure_collection("other", 2, ["group"])
    await store.upsert("other", [point("x", [1, 0], group="a")])
    assert await store.count("other") == 1
    assert await store.count(COLL) == 3


async def test_missing_collection_raises_store_error(store: VectorStore) -> None:
    with pytest.raises(StoreError):
        await store.search("missing", [1, 0, 0, 0])
    with pytest.raises(StoreError):
        await store.count("missing")
    with pytest.raises(StoreError):
        await store.scroll("missing")
    with pytest.raises(StoreError):
        await store.upsert("missing", [point("x", [1, 0, 0, 0])])
    with pytest.raises(StoreError):
        await store.delete("missing", ids=[pid("x")])


async def test_wrong_dimension_raises_store_error(store: VectorStore) -> None:
    with pytest.raises(StoreError):
        await store.upsert(COLL, [point("short", [1, 0, 0])])
    with pytest.raises(StoreError):
        await store.search(COLL, [1, 0])
    assert await store.count(COLL) == 0


_GOOD = pid("ok")
_INVALID_CALLS: dict[str, Callable[[VectorStore], Awaitable[object]]] = {
    "upsert-non-uuid": lambda s: s.upsert(
        COLL, [Point(_GOOD, [1, 0, 0, 0], {}), Point("n1", [1, 0, 0, 0], {})]
    ),
    "upsert-upper-uuid": lambda s: s.upsert(COLL, [Point(_GOOD.upper(), [1, 0, 0, 0], {})]),
    "where-bool": lambda s: s.count(COLL, where={"active": True}),
    "where-float": lambda s: s.count(COLL, where={"score": 0.5}),  # type: ignore[dict-item]
    "where-mixed-any": lambda s: s.count(COLL, where={"group": ["a", 1]}),  # type: ignore[list-item]
    "limit-zero": lambda s: s.search(COLL, [1, 0, 0, 0], limit=0),
    "name-path": lambda s: s.ensure_collection("../escape", DIM, []),
}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("upsert-non-uuid", "not a UUID"),
        ("upsert-upper-uuid", "not canonical"),
        ("where-bool", "bool"),
        ("where-float", "expected str"),
        ("where-mixed-any", "strings"),
        ("limit-zero", "limit"),
        ("name-path", "collection name"),
    ],
)
async def test_invalid_arguments_raise_value_error_before_io(
    store: VectorStore, call: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await _INVALID_CALLS[call](store)
    # Validation happens before any write: the good point of a bad batch is not stored.
    assert await store.count(COLL) == 0


async def test_concurrent_calls_see_consistent_data(store: VectorStore) -> None:
    batches = [group_points([f"g{i}"], per_group=20, seed=i) for i in range(8)]

    await asyncio.gather(*(store.upsert(COLL, b) for b in batches))
    counts = await asyncio.gather(*(store.count(COLL, where={"group": f"g{i}"}) for i in range(8)))

    assert counts == [20] * 8
    assert await store.count(COLL) == 160


async def test_close_is_idempotent_and_final(store: VectorStore) -> None:
    assert await store.ping() is True
    await store.close()
    await store.close()

    assert await store.ping() is False
    with pytest.raises(StoreError):
        await store.count(COLL)


# --- edge only: durability of the embedded store -------------------------------------------


async def test_edge_persists_across_close_and_reopen(tmp_path: Path) -> None:
    batch = group_points(["a", "b"], per_group=10)
    first = EdgeVectorStore(tmp_path)
    await first.ensure_collection(COLL, DIM, FIELDS)
    await first.upsert(COLL, batch)
    await first.delete(COLL, ids=[pid("b#9")])
    hits_before = await first.search(COLL, [1, 0, 0, 0], where={"group": "a"})
    points_before = await first.scroll(COLL)
    await first.close()

    second = EdgeVectorStore(tmp_path)
    try:
        # Usable before ensure_collection: the shard is opened lazily from disk.
        assert await second.count(COLL) == 19
        assert await second.search(COLL, [1, 0, 0, 0], where={"group": "a"}) == hits_before
        assert await second.scroll(COLL) == points_before
        await second.ensure_collection(COLL, DIM, FIELDS)
        with pytest.raises(StoreError):
            await second.ensure_collection(COLL, DIM + 4, FIELDS)
        await second.upsert(COLL, [point("c#0", [1, 0, 0, 0], group="c")])
        assert await second.count(COLL, where={"group": "c"}) == 1
    finally:
        await second.close()


async def test_edge_checks_dim_of_a_lazily_opened_collection(tmp_path: Path) -> None:
    first = EdgeVectorStore(tmp_path)
    await first.ensure_collection(COLL, DIM, FIELDS)
    await first.close()
    second = EdgeVectorStore(tmp_path)
    try:
        assert await second.count(COLL) == 0  # opens without a config
        with pytest.raises(StoreError, match="incompatible"):
            await second.ensure_collection(COLL, 8, FIELDS)
    finally:
        await second.close()


async def test_edge_refuses_a_second_store_on_the_same_path(tmp_path: Path) -> None:
    first = EdgeVectorStore(tmp_path)
    await first.ensure_collection(COLL, DIM, FIELDS)
    second = EdgeVectorStore(tmp_path)
    try:
        with pytest.raises(StoreError, match="WAL"):
            await second.count(COLL)
    finally:
        await second.close()
        await first.close()


async def test_edge_temporary_directory_is_removed_on_close() -> None:
    store = EdgeVectorStore(None)
    await store.ensure_collection(COLL, DIM, FIELDS)
    await store.upsert(COLL, group_points(["a"], per_group=2))
    root = store.path
    assert (root / COLL).is_dir()

    await store.close()

    assert not root.exists()


async def test_edge_optimize_keeps_results(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path)
    try:
        await store.ensure_collection(COLL, DIM, FIELDS)
        await store.upsert(COLL, group_points(["a", "b"], per_group=1000))
        await store.delete(COLL, where={"group": "b"})
        before = await store.search(COLL, [1, 0, 0, 0], where={"group": "a"}, limit=20)

        assert await store.optimize(COLL) is True  # half the points are deleted: vacuum

        assert await store.search(COLL, [1, 0, 0, 0], where={"group": "a"}, limit=20) == before
        assert await store.count(COLL) == 1000
    finally:
        await store.close()


def _edge_search_threads() -> int:
    """Threads of this process that qdrant-edge named for its search pools."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().startswith("edge-search")
        except FileNotFoundError:  # the thread ended while we looked
            continue
    return count


def _settled_edge_search_threads(timeout_s: float = 5.0) -> int:
    """The count once pools of stores closed by earlier tests have wound down (their
    threads end in the background after ``close``)."""
    deadline = time.monotonic() + timeout_s
    while _edge_search_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return _edge_search_threads()


@pytest.mark.parametrize(("asked", "expected"), [(None, 1), (3, 3)])
async def test_edge_search_pool_has_the_threads_asked_for(
    tmp_path: Path, asked: int | None, expected: int
) -> None:
    """One search thread by default (edge would start one per 'CPU', 8 on two cores)."""
    before = _settled_edge_search_threads()
    store = EdgeVectorStore(tmp_path) if asked is None else EdgeVectorStore(tmp_path, asked)
    try:
        await store.ensure_collection(COLL, DIM, FIELDS)
        await store.upsert(COLL, group_points(["a"], per_group=5))
        assert len(await store.search(COLL, [1, 0, 0, 0], where={"group": "a"})) == 5
        assert _edge_search_threads() - before == expected
    finally:
        await store.close()


def test_edge_refuses_an_empty_search_pool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="search_threads"):
        EdgeVectorStore(tmp_path, search_threads=0)
