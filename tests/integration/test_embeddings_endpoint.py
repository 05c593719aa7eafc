"""The OpenAI-compatible embeddings client against a real HTTP server on loopback.

The server is a Starlette app run by uvicorn in a thread; each test scripts its
answers (vectors out of order, 429 with Retry-After, 500s, a hang, malformed JSON,
a 401) and the server records every request so tests can assert on what reached it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from learnloop.embedded.broker import free_port
from learnloop.embeddings import EmbeddingUnavailable, OpenAIEmbedder, make_embedder
from learnloop.settings import EmbedderSettings
from processors.consolidate import ConsolidationConfig, consolidate
from processors.embedding import cosine
from tests.unit.synthesis.helpers import T0
from tests.unit.synthesis.test_consolidate import rule

pytestmark = pytest.mark.integration
Handler = Callable[[dict[str, Any]], Awaitable[Response]]
DIM = 16


def vector_for(text: str) -> list[float]:
    """A deterministic, unnormalised vector per text (first word decides most of it)."""
    head = text.split()[0].lower() if text.split() else ""
    seed = hashlib.sha256(head.encode()).digest()
    noise = hashlib.sha256(text.encode()).digest()
    return [(seed[i] - 128) / 16 + (noise[i] - 128) / 512 for i in range(DIM)]


async def good(body: dict[str, Any]) -> Response:
    rows = [
        {"object": "embedding", "index": i, "embedding": vector_for(t)}
        for i, t in enumerate(body["input"])
    ]
    rows.reverse()  # servers may answer out of order: the index decides
    return JSONResponse({"object": "list", "data": rows, "model": body["model"]})


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handler(body: dict[str, Any]) -> Response:
        return JSONResponse({"error": {"message": "nope"}}, status_code=code, headers=headers)

    return handler


def raw(content: str) -> Handler:
    async def handler(body: dict[str, Any]) -> Response:
        return Response(content, media_type="application/json")

    return handler


def hang(seconds: float) -> Handler:
    async def handler(body: dict[str, Any]) -> Response:
        await asyncio.sleep(seconds)
        return await good(body)

    return handler


class FakeEmbeddings:
    def __init__(self) -> None:
        self.script: list[Handler] = []
        self.default: Handler = good
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.base_url = ""
        self.clients: list[OpenAIEmbedder] = []
        self.app = Starlette(routes=[Route("/v1/embeddings", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        handler = self.script.pop(0) if self.script else self.default
        return await handler(body)


@pytest.fixture
def server() -> Iterator[FakeEmbeddings]:
    fake = FakeEmbeddings()
    port = free_port()
    config = uvicorn.Config(
        fake.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, name="fake-embeddings", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline, "fake embeddings server did not start"
        time.sleep(0.01)
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        for made in fake.clients:
            made.close()
        running.should_exit = True
        thread.join(timeout=10)


def client(fake: FakeEmbeddings, **overrides: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {
        "timeout_s": 1.0,
        "max_retries": 2,
        "batch_size": 2,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    options.update(overrides)
    made = OpenAIEmbedder(fake.base_url, "embed-small", SecretStr("sk-test-123"), **options)
    fake.clients.append(made)
    return made


def test_vectors_come_back_in_order_unit_length_batched_and_cached(
    server: FakeEmbeddings,
) -> None:
    embedder = client(server)
    texts = ["use v2", "answer in German", "use v2", "keep it short", "show code"]
    vectors = embedder.embed(texts)
    assert [b["input"] for b in server.bodies] == [
        ["use v2", "answer in German"],
        ["keep it short", "show code"],
    ]
    assert server.bodies[0]["model"] == "embed-small"
    assert server.headers[0]["authorization"] == "Bearer sk-test-123"
    for text, vector in zip(texts, vectors, strict=True):
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-9)
        expected = vector_for(text)
        assert cosine(vector, expected) == pytest.approx(1.0)
    assert vectors[0] == vectors[2]
    assert embedder.embed(["show code", "use v2"]) == [vectors[4], vectors[0]]
    assert len(server.bodies) == 2  # all cached
    assert embedder.embed([]) == []
    assert embedder.dim == DIM  # learned from the answers, no probe needed
    assert len(server.bodies) == 2


def test_dimension_is_probed_once_when_not_configured(server: FakeEmbeddings) -> None:
    embedder = client(server)
    assert embedder.dim == DIM
    assert embedder.dim == DIM
    assert len(server.bodies) == 1


def test_transient_failures_are_retried_with_retry_after(server: FakeEmbeddings) -> None:
    server.script = [status(429, {"retry-after": "0.2"}), status(503)]
    embedder = client(server)
    started = time.monotonic()
    [vector] = embedder.embed(["use v2"])
    assert time.monotonic() - started >= 0.2  # waited what the server asked
    assert len(server.bodies) == 3
    assert cosine(vector, vector_for("use v2")) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("handlers", "attempts"),
    [
        ([status(500)] * 3, 3),
        ([hang(3.0)] * 3, 3),
        ([raw("{not json")] * 3, 3),
        ([raw('{"data": [{"index": 0, "embedding": [1, 0]}]}')] * 3, 3),  # one of two vectors
        ([status(401)], 1),  # a bad key: no retry helps
    ],
    ids=["500", "timeout", "malformed", "missing-vector", "401"],
)
def test_what_cannot_be_served_raises_unavailable(
    server: FakeEmbeddings, handlers: list[Handler], attempts: int
) -> None:
    server.script = list(handlers)
    embedder = client(server, timeout_s=0.5)
    with pytest.raises(EmbeddingUnavailable) as caught:
        embedder.embed(["use v2", "answer in German"])
    assert caught.value.reason == "embeddings_unavailable"
    assert len(server.bodies) == attempts
    # nothing half-done was cached: the next call asks again and succeeds
    server.script = []
    assert len(embedder.embed(["use v2", "answer in German"])) == 2


def test_settings_choose_the_endpoint_and_consolidation_uses_it(server: FakeEmbeddings) -> None:
    embedder = make_embedder(
        EmbedderSettings(kind="openai", base_url=server.base_url, model="embed-small", dim=DIM)
    )
    assert isinstance(embedder, OpenAIEmbedder)
    server.clients.append(embedder)
    assert embedder.dim == DIM
    # "use ..." texts share a first word, so this fake endpoint calls them near-duplicates
    current = [rule("use the v2 billing API", strength=2.0)]
    candidate = rule("use v2 for billing calls", strength=1.0, at=T0 + 1, events=["e-new"])
    _, changes = consolidate(current, [candidate], T0 + 1, ConsolidationConfig(), embedder)
    assert [c["action"] for c in changes] == ["merged"]
    assert len(server.bodies) == 1  # both texts in one request
    with pytest.raises(ValueError, match="base_url and model"):
        EmbedderSettings(kind="openai")
