"""``POST /v1/context``: the caller's learned context for a query, on every agent request.

:class:`ContextService` assembles the answer (the bytes of the JSON body). It is
served two ways, with the same bytes:

- the FastAPI route (:func:`build_context_router`), which documents the contract in
  ``/openapi.json`` and answers every error (validation, authentication, 403/404
  problems) through the app's handlers;
- :class:`ContextFastPath`, an ASGI middleware in front of FastAPI's router that
  serves the common case itself: ``POST /v1/context`` with an ``application/json``
  body that parses, validates and is authorised. Anything else goes on to the
  route, unchanged. FastAPI's layers (routing through every route, the dependency
  solver, stdlib JSON parsing, validation through a TypeAdapter, the Response
  object, two more middlewares) cost about a quarter of the CPU of a request
  (py-spy, docs/BENCHMARKS.md), on the path every agent call takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learnloop import metrics
from learnloop.api.auth import Caller, CallerDep, authenticate
from learnloop.api.context_cache import PrefixCache
from learnloop.api.memory_log import facet, item_text
from learnloop.api.problems import Problem
from learnloop.embeddings import EmbeddingUnavailable, embed_off_loop
from learnloop.settings import Settings
from learnloop.store.port import Hit, StoreError, Where
from processors.context import EXAMPLE_KINDS, order_groups
from processors.embedding import cosine
from processors.groups import resolve_groups
from processors.memory import MemoryItem, Snapshot
from processors.synthesis.text import contradiction, rule_shape

if TYPE_CHECKING:
    from learnloop.api.app import Services

log = structlog.get_logger(__name__)
PATH = "/v1/context"
FAST_BODY_LIMIT = 256 * 1024
"""Bodies larger than this (the query alone may be 20,000 characters) take the route."""
_SERVED = metrics.CONTEXT_FAST_PATH.labels("served")
_HANDED_ON = metrics.CONTEXT_FAST_PATH.labels("handed_on")


class ContextRequest(BaseModel):
    """Who is asking and what about; ``pin`` fixes a group's memory version."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    team_id: str | None = Field(default=None, max_length=256)
    org_id: str | None = Field(default=None, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    query: str = Field(default="", max_length=20_000)
    max_tokens: int = Field(default=800, ge=16, le=32_000)
    max_examples: int = Field(default=4, ge=0, le=20)
    pin: dict[str, int] = Field(default_factory=dict)


class ContextItemOut(BaseModel):
    """One rule in the prefix, with the id and version it came from."""

    item_id: str
    group: str
    kind: str
    text: str
    version: int
    tokens: int


class ContextAnswer(BaseModel):
    """What ``POST /v1/context`` answers (documentation; the handler writes JSON directly)."""

    prefix: str = Field(description="rules in a stable order; byte-identical per versions used")
    examples: list[dict[str, Any]] = Field(description="examples retrieved for the query")
    versions: dict[str, int] = Field(description="memory version used per group")
    items: list[ContextItemOut] = Field(description="the rules in the prefix, in order")
    dropped: list[dict[str, str]] = Field(
        description="rules left out: overridden by a narrower group's rule, or over budget"
    )
    tokens: int = Field(description="estimated tokens of the prefix and examples")
    groups: list[str] = Field(description="groups whose memory was used, narrowest first")
    hidden: list[dict[str, str]] = Field(description="groups asked for but not visible")


class ContextService:
    """Assembles context answers from the API's memory view, with a prefix cache."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self._settings = settings
        self._services = services
        self._prefixes = PrefixCache(
            settings.context_cache_entries, _conflicts, keys=_conflict_keys
        )

    async def answer(self, body: ContextRequest, who: Caller) -> bytes:
        """The JSON answer; raises :class:`Problem` for a caller or pin it cannot serve.

        Rules of narrower groups override the wider rules they contradict; those are
        left out of the prefix and listed in ``dropped`` with the rule that won.
        """
        who.require("read")
        if who.tenant != "*" and body.org_id not in (None, who.tenant):
            raise Problem(403, "forbidden", f"this key is bound to org {who.tenant!r}")
        org = body.org_id or (who.tenant if who.tenant != "*" else None)
        wanted = resolve_groups(
            body.user_id, body.team_id, org, body.metadata, self._settings.derived_groups
        )
        wanted += [g for g in body.groups if g not in wanted]
        memory = self._services.memory
        snapshots: dict[str, Snapshot] = {}
        hidden: list[dict[str, str]] = []
        for group in order_groups(wanted):
            group_owner = self._services.groups.owner(group)
            if group != "global" and not who.may_see(group, group_owner):
                hidden.append({"group": group, "reason": "not visible to this key"})
                continue
            if org and group_owner not in (None, org) and group != "global":
                hidden.append({"group": group, "reason": "belongs to another org"})
                continue
            pinned = body.pin.get(group)
            snapshot = memory.snapshot(group, pinned)
            if snapshot is None:
                if pinned is not None and memory.current_version(group) is not None:
                    raise Problem(
                        404,
                        "unknown_version",
                        f"{group} has no version {pinned}",
                        [{"field": f"pin.{group}", "reason": "no such version"}],
                    )
                continue
            snapshots[group] = snapshot
        # Only what this caller may read is in `snapshots`, so the cache key (taken
        # from it) cannot hand one tenant's rules to another.
        prefix = self._prefixes.prefix(snapshots, body.max_tokens)
        examples = await _examples(
            self._services,
            snapshots,
            body.query,
            body.pin,
            prefix.budget_left,
            self._settings.context_search_timeout_s,
        )
        result = prefix.context(examples, body.max_tokens, body.max_examples)
        metrics.CONTEXT_ITEMS.observe(prefix.items + len(result["examples"]))
        metrics.CONTEXT_TOKENS.observe(result["tokens"])
        return orjson.dumps({**result, "groups": list(snapshots), "hidden": hidden})


def build_context_router(service: ContextService) -> APIRouter:
    """The documented route; it also answers whatever the fast path hands on."""
    router = APIRouter()

    @router.post(
        PATH,
        tags=["context"],
        response_class=JSONResponse,  # for the docs; the answer is serialised by orjson
        responses={200: {"model": ContextAnswer, "description": "The caller's context"}},
    )
    async def context(body: ContextRequest, who: CallerDep) -> Response:
        """The learned context for a caller and a query: a cacheable prefix, examples, ids.

        Rules of narrower groups override the wider rules they contradict; those are
        left out of the prefix and listed in ``dropped`` with the rule that won.
        """
        return Response(await service.answer(body, who), media_type="application/json")

    return router


class ContextFastPath:
    """ASGI middleware: serves a well-formed, authorised ``POST /v1/context`` directly.

    The same :class:`ContextService` answers, with the same headers as the route's
    ``Response``. Everything else reaches ``app`` as it came, with the body replayed
    when it was read: another path or method, a content type other than
    ``application/json``, a body over :data:`FAST_BODY_LIMIT`, a body that does not
    parse (orjson accepts a subset of what the stdlib does, and parses that subset to
    the same values) or validate, and any :class:`Problem` (401, 403, 404), which the
    route raises again and the app's handlers answer. Nothing is changed before a
    problem is raised, so answering it through the route repeats no side effect.
    """

    def __init__(
        self, app: ASGIApp, service: ContextService, settings: Settings, route: BaseRoute
    ) -> None:
        self.app = app
        self._service = service
        self._settings = settings
        self._route = route  # what the router would put in the scope (metrics label it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not _json_body(scope):
            _HANDED_ON.inc()
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app sees it
                _HANDED_ON.inc()
                await self.app(scope, _replay(chunks, receive, message), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
            if size > FAST_BODY_LIMIT:
                _HANDED_ON.inc()
                await self.app(scope, _replay(chunks, receive, more=True), send)
                return
        body = b"".join(chunks)
        answer = await self._answer(scope, body)
        if answer is None:
            _HANDED_ON.inc()
            await self.app(scope, _replay([body], receive), send)
            return
        _SERVED.inc()
        scope["route"] = self._route
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(answer)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def _answer(self, scope: Scope, body: bytes) -> bytes | None:
        """The answer, or None when the route must answer (see the class docstring)."""
        if len(body) > FAST_BODY_LIMIT:
            return None
        try:
            parsed = orjson.loads(body)
            request = ContextRequest.model_validate(parsed)
            who = authenticate(self._settings, Request(scope))
            return await self._service.answer(request, who)
        except (orjson.JSONDecodeError, ValidationError, Problem):
            return None


def _json_body(scope: Scope) -> bool:
    """The request says its body is ``application/json`` (parameters such as a charset
    allowed); FastAPI would parse it as JSON too."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False


def _replay(
    chunks: list[bytes], receive: Receive, last: Message | None = None, *, more: bool = False
) -> Receive:
    """A ``receive`` that first gives back what was read, then the rest of the stream."""
    pending: list[Message] = [
        {"type": "http.request", "body": b"".join(chunks), "more_body": more or last is not None}
    ]
    if last is not None:
        pending.append(last)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _conflicts(narrow: MemoryItem, wide: MemoryItem) -> bool:
    """A narrower group's rule overrides a wider one that it contradicts."""
    if narrow["group"] == wide["group"]:
        return False
    return contradiction(narrow["text"], wide["text"]) is not None


def _conflict_keys(item: MemoryItem) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a rule offers to, and seeks in, a contradiction (see ``_conflicts``).

    ``contradiction(narrow, wide)`` needs a thing ``narrow`` asks for that ``wide``
    avoids, a thing ``narrow`` avoids that ``wide`` asks for, or an exclusive choice
    (language, version, ...) that both make. So ``narrow`` offers ``+t`` for what it
    asks for, ``-t`` for what it avoids and ``=name`` for its choices; ``wide`` seeks
    ``-t`` for what it asks for, ``+t`` for what it avoids and the same ``=name``.
    tests/unit/test_precedence_keys.py checks that no contradiction is missed.
    """
    return _text_keys(item["text"])


@lru_cache(maxsize=16_384)
def _text_keys(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Tuples of strings, not sets: the collector stops tracking them, so a full
    cache costs a full collection nothing."""
    shape = rule_shape(text)
    choices = {f"={name}" for name, _ in shape.choices}
    offers = {f"+{t}" for t in shape.positive} | {f"-{t}" for t in shape.negative}
    seeks = {f"-{t}" for t in shape.positive} | {f"+{t}" for t in shape.negative}
    return tuple(sorted(offers | choices)), tuple(sorted(seeks | choices))


async def _examples(
    services: Services,
    snapshots: dict[str, Snapshot],
    query: str,
    pins: dict[str, int],
    budget: int,
    search_timeout_s: float,
) -> list[tuple[float, MemoryItem]]:
    """Examples similar to the query: from the index for current versions, by scan if pinned.

    None are looked for when not one of the groups' examples fits in ``budget`` (what
    the rules left): the answer would be the same, without the embedding and search.
    An embedding or a search that fails or outlasts ``search_timeout_s`` finds none
    (see ``_search``): a remote embedder that hangs costs the examples, not the request.
    """
    if not query or not snapshots:
        return []
    cheapest = (services.memory.cheapest_example(g, s["version"]) for g, s in snapshots.items())
    if min((c for c in cheapest if c is not None), default=budget + 1) > budget:
        return []
    embedder = services.memory.embedder
    try:
        embed = partial(embedder.embed, [query])
        vector = (await embed_off_loop(embedder, embed, search_timeout_s))[0]
    except (EmbeddingUnavailable, TimeoutError):
        log.warning("embedder unavailable: context served without examples")
        return []  # the rules prefix still goes out; examples come back with the embedder
    found: list[tuple[float, MemoryItem]] = []
    current_groups = [g for g in snapshots if g not in pins]
    if current_groups:
        # One search for all the caller's groups. The filter names only those groups,
        # and a hit counts only if it is an item of their current snapshots, so
        # nothing outside what the caller may read can come back.
        where = {"facet": [facet(g, k, "active") for g in current_groups for k in EXAMPLE_KINDS]}
        hits = await _search(services, vector, where, search_timeout_s)
        for hit in hits:
            for group in current_groups:
                item = services.memory.item(group, snapshots[group]["version"], hit.id)
                if item is not None:
                    found.append((hit.score, item))
                    break
    for group in (g for g in snapshots if g in pins):
        items = [
            i
            for i in snapshots[group]["items"]
            if i["kind"] in EXAMPLE_KINDS and i["status"] == "active"
        ]
        if items:
            texts = [item_text(i) for i in items]
            try:
                vectors = await embed_off_loop(
                    embedder, partial(embedder.embed, texts), search_timeout_s
                )
            except (EmbeddingUnavailable, TimeoutError):
                continue
            found.extend((cosine(vector, v), i) for i, v in zip(items, vectors, strict=True))
    return found


async def _search(
    services: Services, vector: Sequence[float], where: Where, timeout_s: float
) -> list[Hit]:
    """The index's hits for a context request, or none when the store fails or is slow.

    Why: the agent asks on every request, and the rules prefix needs no store; a
    store that is down or stuck must cost it the examples (as an unavailable
    embedder does), not a 500 after the store adapter's own, much longer, timeout.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            hits = await services.memory.store.search(
                services.memory.collection, vector, limit=12, where=where, with_payload=False
            )
    except (StoreError, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, StoreError) else f"search timed out after {timeout_s}s"
        log.warning("vector store unavailable: context served without examples", reason=reason)
        return []
    metrics.CONTEXT_SEARCH_SECONDS.observe(time.perf_counter() - started)
    return hits
