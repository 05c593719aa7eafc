"""The API's memory history: old versions held compressed, and read exactly as published.

On the session's embedded broker and the embedded (edge) store: versions are
published to the versions topic as the worker writes them, and read back through the
API's ``MemoryLog`` and its HTTP endpoints.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from learnloop.api import memory_log as memory_log_module
from learnloop.api import version_archive as version_archive_module
from learnloop.api.app import Services
from learnloop.api.forget_at_rest import redact_history
from learnloop.api.memory_log import RECENT_PARSED
from learnloop.settings import Settings
from learnloop.topics import ensure_topics
from processors.memory import version_key
from processors.memory_ops import as_forgotten, diff, forgotten_users
from streams.partitioning import default_partition
from tests.integration import test_api_store_outage as outage
from tests.integration.test_api_store_outage import Outage, memory_log, until

pytestmark = pytest.mark.integration
# that module's fixtures: this test's settings and topics, the edge store, the API app
settings, edge, api = outage.settings, outage.edge, outage.api
VERSIONS = 100


def item(n: int, group: str, users: list[str]) -> dict[str, Any]:
    """An item as the worker writes it: uuid ids, a sentence of text, its evidence."""
    return {
        "item_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{group}/{n}")),
        "group": group,
        "kind": "rule" if n % 3 else "preferred_example",
        "status": ("active", "proposed", "retired")[n % 3],
        "text": f"Prefer the v2 billing client and always paginate list calls ({n}).",
        "tokens": 12,
        "strength": 1.0,
        "support": 3,
        "created_ms": 1_700_000_000_000 + n,
        "updated_ms": 1_700_000_000_000 + n,
        "last_support_ms": 1_700_000_000_000 + n,
        "provenance": {
            "user_ids": users,
            "event_ids": [str(uuid.uuid4()) for _ in range(8)],
            "distinct_users": len(users),
            "synthesizer": "offline",
            "prompt_version": None,
            "derived_by": "rating",
            "trigger_id": None,
            "trigger_reason": None,
        },
    }


def history(group: str) -> list[dict[str, Any]]:
    """VERSIONS versions of 30 items; bob is forgotten at 60, carol at 90 (parent 80)."""
    out = []
    for version in range(1, VERSIONS + 1):
        users = ["alice", "bob", "carol"]
        reason, parent = f"synthesis:t{version}", version - 1 or None
        if version >= 60:
            users.remove("bob")
            reason = "forget_user" if version == 60 else reason
        if version >= 90:
            users.remove("carol")
        if version == 90:  # a parent long out of the parsed versions: decompressed
            reason, parent = "forget_user", 80
        items = [item(version * 100 + n, group, users[: 1 + n % 3]) for n in range(30)]
        out.append(
            {
                "group": group,
                "version": version,
                "parent": parent,
                "reason": reason,
                "created_ms": 1_700_000_000_000 + version,
                "items": items,
                **({"actor": "ops"} if version % 10 == 0 else {}),
            }
        )
    return out


def held_by_memory_log(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot) -> int:
    """Bytes allocated (and still live) in memory_log.py and the archive it keeps its
    records in: not the embedder's cache."""
    only = [
        tracemalloc.Filter(True, memory_log_module.__file__),
        tracemalloc.Filter(True, version_archive_module.__file__),
    ]
    growth = after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    return sum(stat.size_diff for stat in growth)


async def publish_all(settings: Settings, snapshots: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for snapshot in snapshots:
            # keyed as the worker keys them; one partition per group, as the worker's
            key = version_key(snapshot["group"], snapshot["version"])
            partition = default_partition(snapshot["group"].encode(), settings.partitions)
            await producer.send(
                settings.topics.versions, orjson.dumps(snapshot), key=key, partition=partition
            )
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.parametrize("where", ["memory", "file"])
async def test_old_versions_are_held_compressed_and_read_as_published(
    settings: Settings, edge: Outage, tmp_path: Path, where: str
) -> None:
    """100 versions of 30 items: parsed, ~75 KiB each; all but the newest few compressed.

    Only RECENT_PARSED versions (and a decompressed parent of a forgetting) may stay
    parsed; the rest may take ~8 KiB each in memory, and ~1 KiB (a header and where
    the record is) when the compressed records go to the history file, as the API
    process does (measured: about 1.2 MB held in memory, 0.4 MB with the file).
    """
    assert settings.kafka_bootstrap is not None
    await ensure_topics(settings.kafka_bootstrap, settings)
    published = history("team:h")
    memory = memory_log(settings, edge, tmp_path / "api" if where == "file" else None)
    tracemalloc.start()
    try:
        await memory.start()

        async def started() -> bool:
            return memory.caught_up.is_set()

        await until(started, 30, "the empty log read")
        gc.collect()
        before = tracemalloc.take_snapshot()
        await publish_all(settings, published)

        async def read() -> bool:
            return memory.current_version("team:h") == VERSIONS

        await until(read, 60, "every version read")
        gc.collect()
        held = held_by_memory_log(tracemalloc.take_snapshot(), before)
    finally:
        tracemalloc.stop()
    try:
        # parsed: the RECENT_PARSED newest, and the parents of the two forgettings (59
        # and 80), read once to see whom they removed, in the cache of older versions
        per_version = 12 * 1024 if where == "memory" else 1024
        bound = (RECENT_PARSED + 2) * 100 * 1024 + VERSIONS * per_version
        assert held < bound, f"{held / 2**20:.2f} MiB held for {VERSIONS} versions"
        for _ in range(2):  # once decompressed, then (the newest of them) from the cache
            for snapshot in published:
                assert memory.snapshot("team:h", snapshot["version"]) == snapshot
        assert memory.snapshot("team:h") == published[-1]
        assert memory.snapshot("team:h", VERSIONS + 1) is None
    finally:
        await memory.stop()


@pytest.mark.filterwarnings("ignore:ORJSONResponse is deprecated")
async def test_versions_list_forgotten_users_and_old_versions_answer_as_before(
    settings: Settings,
    api: tuple[Services, httpx.AsyncClient],
) -> None:
    """The endpoints' JSON is what the whole parsed history gives (the former way)."""
    services, client = api
    published = history("team:h")
    await publish_all(settings, published)

    async def read() -> bool:
        return services.memory.current_version("team:h") == VERSIONS

    await until(read, 60, "every version read")
    forgotten = forgotten_users(published)
    assert forgotten == {"bob": 60, "carol": 90}
    assert services.memory.forgotten("team:h") == forgotten

    listed = (await client.get("/v1/groups/team:h/versions")).json()
    assert listed == {
        "group": "team:h",
        "current": VERSIONS,
        "versions": [
            {
                "version": s["version"],
                "parent": s["parent"],
                "reason": s["reason"],
                "created_ms": s["created_ms"],
                "actor": s.get("actor"),
                "items": dict(Counter(i["status"] for i in s["items"])),
            }
            for s in published
        ],
    }
    for snapshot in published:
        answer = await client.get(
            "/v1/groups/team:h/memory", params={"version": snapshot["version"]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == as_forgotten(snapshot, forgotten), snapshot["version"]
    assert "bob" not in str((await client.get("/v1/groups/team:h/memory?version=1")).json())
    changed = await client.get("/v1/groups/team:h/diff", params={"from": 2, "to": 95})
    want = diff(as_forgotten(published[1], forgotten), published[94])
    assert changed.json() == {"group": "team:h", "from": 2, "to": 95, **want}


@pytest.mark.filterwarnings("ignore:ORJSONResponse is deprecated")
async def test_forgotten_users_old_versions_are_rewritten_and_answers_do_not_change(
    settings: Settings,
    api: tuple[Services, httpx.AsyncClient],
) -> None:
    """After the rewrite the topic's last record per key names neither forgotten user,
    each in its original's partition, and every version reads as it did."""
    services, client = api
    group = "team:r"
    published = history(group)
    await publish_all(settings, published)

    async def read() -> bool:
        return services.memory.current_version(group) == VERSIONS

    await until(read, 60, "every version read")

    async def answers() -> list[Any]:
        return [
            (await client.get(f"/v1/groups/{group}/memory", params={"version": v})).json()
            for v in range(1, VERSIONS + 1)
        ]

    shown = await answers()
    partition = services.memory.partition_of(group)
    assert partition is not None
    memory, producer, topic = services.memory, services.producer, settings.topics.versions
    # carol's first: her rewrite of versions 1-59 must not put bob back in them
    carol = await redact_history(memory, producer, topic, group, "carol")
    bob = await redact_history(memory, producer, topic, group, "bob")
    assert carol == list(range(1, 90))
    # carol's rewrites already left bob out; whatever the API had not read back yet
    # is written again (the same bytes)
    assert set(bob) <= set(range(1, 60))
    assert await redact_history(memory, producer, topic, group, "alice") == []  # not forgotten

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        at_rest: dict[bytes, dict[str, Any]] = {}
        count = 0
        while count < VERSIONS + len(carol) + len(bob):  # every record: none compacted here
            batch = await consumer.getmany(tp, timeout_ms=2000)
            assert batch, f"only {count} records in partition {partition}"
            for record in batch[tp]:
                value = orjson.loads(record.value)
                if record.key in at_rest:  # a rewrite: as the API shows that version
                    want = as_forgotten(published[value["version"] - 1], {"bob": 60, "carol": 90})
                    assert value == want, value["version"]
                at_rest[record.key] = value
                count += 1
    finally:
        await consumer.stop()
    for version in range(1, VERSIONS + 1):
        items = at_rest[version_key(group, version)]["items"]
        users = {u for i in items for u in i["provenance"]["user_ids"]}
        assert "carol" not in users or version >= 90, version
        assert "bob" not in users or version >= 60, version

    async def reread() -> bool:  # the API reads its own rewrites too
        stored = services.memory.snapshot(group, 1)
        return stored is not None and "carol" not in str(stored["items"])

    await until(reread, 30, "the rewrites read back")
    assert services.memory.forgotten(group) == {"bob": 60, "carol": 90}
    assert await answers() == shown
