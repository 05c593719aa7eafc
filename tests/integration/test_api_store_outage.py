"""The API while the vector store fails: context is served without examples, quickly.

Everything runs on the session's embedded broker and the embedded (edge) store. The
outages are real: a Qdrant address that refuses connections, and one that accepts
them and never answers, both through the production adapter.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from qdrant_client import AsyncQdrantClient
from structlog.testing import capture_logs

from learnloop.api.app import Services, create_api
from learnloop.api.group_view import GroupView, changelog_topic
from learnloop.api.memory_log import MemoryLog
from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.producer import EventProducer
from learnloop.settings import Settings, load_settings
from learnloop.store.edge import EdgeVectorStore
from learnloop.store.port import VectorStore
from learnloop.store.qdrant_server import QdrantServerStore
from learnloop.topics import ensure_topics
from processors.embedding import HashingEmbedder
from tests.conftest import unique_env

pytestmark = pytest.mark.integration


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


def memory_log(settings: Settings, store: VectorStore) -> MemoryLog:
    assert settings.kafka_bootstrap is not None
    return MemoryLog(
        settings.kafka_bootstrap,
        settings.topics.versions,
        settings.topics.results,
        settings.partitions,
        store,
        HashingEmbedder(),
    )


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[EdgeVectorStore]:
    store = EdgeVectorStore(tmp_path / "vectors")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def api(
    settings: Settings, edge: EdgeVectorStore
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
