"""The API while the vector store fails: context is served without examples, quickly,
and a memory version whose indexing failed is indexed once the store is back.

Everything runs on the session's embedded broker and the embedded (edge) store. The
outages are real where they can be: a Qdrant address that refuses connections, and
one that accepts them and never answers, both through the production adapter. A
transient failure of the embedded store, which has no network to cut, is a thin
wrapper over the real store that fails every data call while ``down`` is set.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from qdrant_client import AsyncQdrantClient
from structlog.testing import capture_logs

from learnloop.api.app import Services, create_api
from learnloop.api.group_view import GroupView, changelog_topic
from learnloop.api.memory_log import MemoryLog
from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.embeddings import OpenAIEmbedder
from learnloop.producer import EventProducer
from learnloop.settings import Settings, load_settings
from learnloop.store.edge import EdgeVectorStore
from learnloop.store.port import Hit, Point, StoreError, VectorStore, Where
from learnloop.store.qdrant_server import QdrantServerStore
from learnloop.topics import ensure_topics
from processors.embedding import HashingEmbedder
from tests.conftest import unique_env

pytestmark = pytest.mark.integration
BEHIND = "learnloop_memory_index_behind_groups"


class Outage:
    """The real store, except that every data call fails while ``down`` is set."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self.down = False
        self.failures = 0

    def _check(self, what: str) -> None:
        if self.down:
            self.failures += 1
            raise StoreError(f"qdrant: {what} memory failed: connection refused")

    async def ensure_collection(self, name: str, dim: int, keyword_fields: Sequence[str]) -> None:
        await self.store.ensure_collection(name, dim, keyword_fields)

    async def upsert(self, collection: str, points: Sequence[Point]) -> None:
        self._check("upsert")
        await self.store.upsert(collection, points)

    async def delete(
        self, collection: str, *, ids: Sequence[str] | None = None, where: Where | None = None
    ) -> None:
        self._check("delete")
        await self.store.delete(collection, ids=ids, where=where)

    async def search(self, collection: str, vector: Sequence[float], **kw: Any) -> list[Hit]:
        self._check("search")
        return await self.store.search(collection, vector, **kw)

    async def scroll(self, collection: str, **kw: Any) -> list[Point]:
        self._check("scroll")
        return await self.store.scroll(collection, **kw)

    async def count(self, collection: str, *, where: Where | None = None) -> int:
        self._check("count")
        return await self.store.count(collection, where=where)

    async def ping(self) -> bool:
        return not self.down and await self.store.ping()

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This test's own topics and app id, read from LEARNLOOP_* as the API reads them."""
    for name, value in unique_env(broker, tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A Qdrant address that accepts connections and never answers (a stuck server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def item(n: int, group: str, kind: str = "preferred_example", **extra: Any) -> dict[str, Any]:
    return {
        "item_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{group}/{n}")),
        "group": group,
        "kind": kind,
        "status": "active",
        "text": f"item {n}",
        "tokens": 3,
        "strength": 1.0,
        "support": 3,
        "created_ms": 0,
        "updated_ms": 0,
        "last_support_ms": 0,
        "provenance": {
            "user_ids": ["u"],
            "event_ids": [],
            "distinct_users": 1,
            "synthesizer": "offline",
            "prompt_version": None,
            "derived_by": "rating",
            "trigger_id": None,
            "trigger_reason": None,
        },
        **extra,
    }


async def publish(settings: Settings, group: str, version: int, items: list[Any]) -> None:
    """One memory version on the versions topic, as the worker writes it."""
    snapshot = {
        "group": group,
        "version": version,
        "parent": version - 1 or None,
        "reason": "test",
        "created_ms": 0,
        "items": items,
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.versions, orjson.dumps(snapshot), key=group.encode()
        )
    finally:
        await producer.stop()


async def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


def memory_log(
    settings: Settings, store: VectorStore, history_dir: Path | None = None
) -> MemoryLog:
    assert settings.kafka_bootstrap is not None
    return MemoryLog(
        settings.kafka_bootstrap,
        settings.topics.versions,
        settings.topics.results,
        settings.partitions,
        store,
        HashingEmbedder(),
        history_dir,
    )


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Outage]:
    outage = Outage(EdgeVectorStore(tmp_path / "vectors"))
    try:
        yield outage
    finally:
        await outage.close()


@pytest.fixture
async def api(
    settings: Settings, edge: Outage
) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """The API app in this process, its services started, and a client of it."""
    assert settings.kafka_bootstrap is not None
    await ensure_topics(settings.kafka_bootstrap, settings)
    services = Services(
        producer=EventProducer(settings.kafka_bootstrap, settings.topics.events),
        groups=GroupView(
            settings.kafka_bootstrap,
            changelog_topic(settings.app_id, "group-state"),
            settings.partitions,
        ),
        memory=memory_log(settings, edge),
        bootstrap=settings.kafka_bootstrap,
    )
    app = create_api(settings, services)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    await services.producer.start()
    await services.groups.start()
    await services.memory.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield services, client
    finally:
        await services.memory.stop()
        await services.groups.stop()
        await services.producer.stop()


@pytest.mark.parametrize("qdrant", ["stuck", "refusing"])
async def test_context_is_served_without_examples_within_the_search_deadline(
    settings: Settings,
    api: tuple[Services, httpx.AsyncClient],
    blackhole: str,
    qdrant: str,
) -> None:
    services, client = api
    rule = item(1, "user:alice", kind="rule", text="Answer in French.")
    example = item(2, "user:alice", query="hi", text="bonjour")
    await publish(settings, "user:alice", 1, [rule, example])

    async def read() -> bool:
        return services.memory.current_version("user:alice") == 1

    await until(read, 30, "the API read user:alice v1")
    body = {"user_id": "alice", "query": "hi"}
    healthy = await client.post("/v1/context", json=body)
    assert healthy.status_code == 200, healthy.text
    assert [e["item_id"] for e in healthy.json()["examples"]] == [example["item_id"]]

    url = blackhole if qdrant == "stuck" else f"http://127.0.0.1:{free_port()}"
    edge = services.memory.store
    # the production adapter and its timeout; no version check, which would warn
    qdrant_client = AsyncQdrantClient(url=url, timeout=10, check_compatibility=False)
    down = QdrantServerStore.from_client(qdrant_client, timeout_s=settings.external_timeout_s)
    services.memory.store = down
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            degraded = await client.post("/v1/context", json=body)
            elapsed = time.monotonic() - started
    finally:
        services.memory.store = edge
        await down.close()

    assert degraded.status_code == 200, degraded.text
    assert elapsed < settings.context_search_timeout_s + 1.5, elapsed
    assert degraded.headers.keys() == healthy.headers.keys()
    answer = degraded.json()
    assert answer["examples"] == []
    assert answer["prefix"] == healthy.json()["prefix"]
    assert "Answer in French." in answer["prefix"]
    assert answer["versions"] == {"user:alice": 1}
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert warnings[0]["event"] == "vector store unavailable: context served without examples"
    reason = warnings[0]["reason"]
    assert ("timed out" in reason) if qdrant == "stuck" else ("failed" in reason), reason
    assert "Traceback" not in degraded.text


async def test_a_hung_remote_embedder_costs_the_examples_not_the_request(
    settings: Settings, api: tuple[Services, httpx.AsyncClient], blackhole: str
) -> None:
    """The query's embedding has the same deadline as the search: a remote embedder
    that never answers (the real client, against a server that accepts and is silent)
    gets the rules out without examples, not a request held for the client's timeout."""
    services, client = api
    await publish(settings, "user:bea", 1, [item(1, "user:bea", kind="rule", text="Be brief."),
                                            item(2, "user:bea", query="hi", text="hello")])

    async def read() -> bool:
        return services.memory.current_version("user:bea") == 1

    await until(read, 30, "the API read user:bea v1")
    hashing = services.memory.embedder
    remote = OpenAIEmbedder(blackhole, "silent", dim=384, timeout_s=4.0, max_retries=0)
    services.memory.embedder = remote
    try:
        started = time.monotonic()
        answer = await client.post("/v1/context", json={"user_id": "bea", "query": "hi"})
        elapsed = time.monotonic() - started
    finally:
        services.memory.embedder = hashing
        await asyncio.to_thread(remote.close)
    assert answer.status_code == 200, answer.text
    assert elapsed < settings.context_search_timeout_s + 1.5, elapsed
    assert answer.json()["examples"] == [] and "Be brief." in answer.json()["prefix"]


async def test_a_version_whose_indexing_failed_is_indexed_once_the_store_is_back(
    settings: Settings, edge: Outage
) -> None:
    assert settings.kafka_bootstrap is not None
    await ensure_topics(settings.kafka_bootstrap, settings)
    memory = memory_log(settings, edge)
    one, two, three = (item(n, "team:a") for n in (1, 2, 3))
    await publish(settings, "team:a", 1, [one, two])
    await memory.start()
    try:

        async def indexed() -> set[str]:
            return {p.id for p in await edge.store.scroll(memory.collection)}

        async def v1_indexed() -> bool:
            return await indexed() == {one["item_id"], two["item_id"]}

        await until(v1_indexed, 30, "v1 indexed")
        edge.down = True
        with capture_logs() as logs:
            # v2 drops item 1 and adds item 3, while the store fails
            await publish(settings, "team:a", 2, [two, three])

            async def failed() -> bool:
                return memory.current_version("team:a") == 2 and edge.failures > 0

            await until(failed, 30, "v2 read and its indexing failed")
            behind_while_down = REGISTRY.get_sample_value(BEHIND)
            with pytest.raises(StoreError, match="index is behind"):
                await memory.reconcile()  # a rebuild must not report an index it lacks
            edge.down = False

            async def v2_indexed() -> bool:
                return await indexed() == {two["item_id"], three["item_id"]}

            await until(v2_indexed, 10, "v2 indexed after the outage")
        assert (behind_while_down, REGISTRY.get_sample_value(BEHIND)) == (1, 0)
        behind = [e for e in logs if e["event"] == "memory index behind: indexing failed"]
        assert behind and all(e["log_level"] == "warning" for e in behind), logs
        assert "connection refused" in behind[0]["reason"]
        assert all("exc_info" not in e for e in logs), logs
    finally:
        await memory.stop()
