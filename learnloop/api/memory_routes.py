"""Memory endpoints: read versions and diffs, change items, and assemble context.

Reads come from the API's follower of the versions log. Changes are commands
sent through Kafka to the worker that owns the group (its single writer); the
endpoint waits briefly for the outcome so a person sees the new version at once.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from learnloop import metrics
from learnloop.api.auth import Caller, CallerDep
from learnloop.api.context_cache import PrefixCache
from learnloop.api.memory_log import facet, item_text
from learnloop.api.problems import Problem
from learnloop.embeddings import EmbeddingUnavailable, embed_off_loop
from learnloop.errors import BrokerError
from learnloop.settings import Settings
from processors.context import EXAMPLE_KINDS, order_groups
from processors.embedding import cosine
from processors.groups import resolve_groups
from processors.memory import MemoryItem, Snapshot
from processors.memory_ops import diff, empty_snapshot
from processors.synthesis.text import contradiction, rule_shape

if TYPE_CHECKING:
    from learnloop.api.app import Services

log = structlog.get_logger(__name__)
COMMAND_WAIT_S = 10.0


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


class ItemPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, max_length=2000)
    status: Literal["active", "retired", "rejected", "proposed"] | None = None


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=0)


def build_router(settings: Settings, services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1")

    memory = services.memory

    def owner(group: str) -> str | None:
        return services.groups.owner(group)

    def owner_known(group: str) -> bool:
        """The workers hold state for ``group`` (it exists, if with no memory yet)."""
        return services.groups.known(group)

    def readable(who: Caller, group: str) -> None:
        who.require("read")
        who.check_group(group, owner(group))

    def snapshot_or_404(group: str, version: int | None = None) -> Snapshot:
        snapshot = memory.snapshot(group, version)
        if snapshot is None:
            if version is not None and memory.current_version(group) is not None:
                raise Problem(404, "unknown_version", f"{group} has no version {version}")
            if version == 0 or (version is None and owner_known(group)):
                return empty_snapshot(group)
            raise Problem(404, "unknown_group", f"no group {group!r}")
        return snapshot

    @router.get("/groups/{group}/memory", tags=["memory"])
    async def group_memory(
        group: str, who: CallerDep, version: int | None = Query(default=None, ge=0)
    ) -> dict[str, Any]:
        """The group's memory at a version (the current one by default)."""
        readable(who, group)
        return dict(snapshot_or_404(group, version))

    @router.get("/groups/{group}/versions", tags=["memory"])
    async def group_versions(group: str, who: CallerDep) -> dict[str, Any]:
        """Every version with its parent, reason, time and item counts: the audit trail."""
        readable(who, group)
        snapshots = memory.versions(group)
        if not snapshots and not owner_known(group):
            raise Problem(404, "unknown_group", f"no group {group!r}")
        return {
            "group": group,
            "current": memory.current_version(group) or 0,
            "versions": [
                {
                    "version": s["version"],
                    "parent": s["parent"],
                    "reason": s["reason"],
                    "created_ms": s["created_ms"],
                    "actor": s.get("actor"),
                    "items": dict(Counter(i["status"] for i in s["items"])),
                }
                for s in snapshots
            ],
        }

    @router.get("/groups/{group}/diff", tags=["memory"])
    async def group_diff(
        group: str,
        who: CallerDep,
        from_: int = Query(alias="from", ge=0),
        to: int = Query(ge=0),
    ) -> dict[str, Any]:
        """Items added, removed and changed (field by field) between two versions."""
        readable(who, group)
        return {
            "group": group,
            "from": from_,
            "to": to,
            **diff(snapshot_or_404(group, from_), snapshot_or_404(group, to)),
        }

    async def run_command(who: Caller, group: str, command: dict[str, Any]) -> dict[str, Any]:
        who.require("admin")
        who.check_group(group, owner(group), change=True)
        command_id = str(uuid.uuid4())
        command.update(command_id=command_id, group=group, actor=who.name, created_ms=_now_ms())
        try:
            await services.producer.send_raw(
                settings.topics.commands, group.encode(), orjson.dumps(command)
            )
        except BrokerError as exc:
            raise Problem(503, "broker_unavailable", str(exc)) from None
        result = await memory.wait_result(command_id, COMMAND_WAIT_S)
        if result is None:
            return {"command_id": command_id, "outcome": "pending"}
        if result["outcome"] == "rejected":
            raise Problem(409, "command_rejected", result.get("reason", "rejected"))
        await memory.wait_version(group, result["version"], COMMAND_WAIT_S)
        return {"command_id": command_id, **result}

    def require_item(who: Caller, group: str, item_id: str) -> None:
        """403/404 as for any read of the group, then 404 if it has no such item."""
        readable(who, group)
        current = memory.snapshot(group)
        if current is None or all(i["item_id"] != item_id for i in current["items"]):
            raise Problem(404, "unknown_item", f"{group} has no item {item_id}")

    async def item_command(who: Caller, group: str, item_id: str, kind: str) -> dict[str, Any]:
        """A change to one existing item (``run_command`` checks admin scope and tenant)."""
        require_item(who, group, item_id)
        return await run_command(who, group, {"type": kind, "item_id": item_id})

    @router.patch("/groups/{group}/items/{item_id}", tags=["changes"])
    async def patch_item(
        group: str, item_id: str, body: ItemPatch, who: CallerDep
    ) -> dict[str, Any]:
        """Edit an item's text or status; produces a new version."""
        require_item(who, group, item_id)
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise Problem(
                422,
                "invalid_request",
                "nothing to change",
                [{"field": "text", "reason": "give text or status"}],
            )
        return await run_command(
            who, group, {"type": "edit", "item_id": item_id, "changes": changes}
        )

    @router.delete("/groups/{group}/items/{item_id}", tags=["changes"])
    async def delete_item(group: str, item_id: str, who: CallerDep) -> dict[str, Any]:
        """Delete an item; produces a new version without it."""
        return await item_command(who, group, item_id, "delete")

    @router.post("/groups/{group}/items/{item_id}/approve", tags=["changes"])
    async def approve_item(group: str, item_id: str, who: CallerDep) -> dict[str, Any]:
        """Approve a proposed item (wide scopes wait for this); it becomes active."""
        return await item_command(who, group, item_id, "approve")

    @router.post("/groups/{group}/items/{item_id}/reject", tags=["changes"])
    async def reject_item(group: str, item_id: str, who: CallerDep) -> dict[str, Any]:
        """Reject a proposed item; it never reaches a prompt."""
        return await item_command(who, group, item_id, "reject")

    @router.post("/groups/{group}/rollback", tags=["changes"])
    async def rollback(group: str, body: RollbackRequest, who: CallerDep) -> dict[str, Any]:
        """A new version whose items are exactly those of an earlier version."""
        readable(who, group)
        target = snapshot_or_404(group, body.version)
        return await run_command(
            who,
            group,
            {"type": "rollback", "version": body.version, "rollback_items": target["items"]},
        )

    @router.post("/groups/{group}/reset", tags=["changes"])
    async def reset(group: str, who: CallerDep) -> dict[str, Any]:
        readable(who, group)
        snapshot_or_404(group)
        return await run_command(who, group, {"type": "reset"})

    @router.delete("/users/{user_id}", tags=["changes"])
    async def forget_user(user_id: str, who: CallerDep) -> dict[str, Any]:
        """Forget a user everywhere: every group whose memory or state holds their evidence."""
        who.require("admin")
        groups = {f"user:{user_id}"} if memory.snapshot(f"user:{user_id}") else set()
        for group in memory.groups():
            snapshot = memory.snapshot(group)
            if snapshot and any(user_id in i["provenance"]["user_ids"] for i in snapshot["items"]):
                groups.add(group)
        groups |= set(services.groups.groups_with_contributor(user_id))
        results = []
        for group in sorted(g for g in groups if who.may_see(g, owner(g)) or g == "global"):
            retired_before = _retired(memory.snapshot(group))
            try:
                outcome = await run_command(who, group, {"type": "forget_user", "user_id": user_id})
            except Problem as problem:
                if problem.code != "command_rejected":
                    raise
                outcome = {"outcome": "nothing_to_forget"}
            retired = sorted(_retired(memory.snapshot(group)) - retired_before)
            results.append({"group": group, **outcome, "retired_items": retired})
        return {"user_id": user_id, "groups": results}

    prefixes = PrefixCache(settings.context_cache_entries, _conflicts, keys=_conflict_keys)

    @router.post(
        "/context",
        tags=["context"],
        response_class=JSONResponse,  # for the docs; the answer is serialised by orjson
        responses={200: {"model": ContextAnswer, "description": "The caller's context"}},
    )
    async def context(body: ContextRequest, who: CallerDep) -> Response:
        """The learned context for a caller and a query: a cacheable prefix, examples, ids.

        Rules of narrower groups override the wider rules they contradict; those are
        left out of the prefix and listed in ``dropped`` with the rule that won.
        """
        who.require("read")
        if who.tenant != "*" and body.org_id not in (None, who.tenant):
            raise Problem(403, "forbidden", f"this key is bound to org {who.tenant!r}")
        org = body.org_id or (who.tenant if who.tenant != "*" else None)
        wanted = resolve_groups(
            body.user_id, body.team_id, org, body.metadata, settings.derived_groups
        )
        wanted += [g for g in body.groups if g not in wanted]
        snapshots: dict[str, Snapshot] = {}
        hidden: list[dict[str, str]] = []
        for group in order_groups(wanted):
            group_owner = owner(group)
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
        prefix = prefixes.prefix(snapshots, body.max_tokens)
        examples = await _examples(
            services, snapshots, body.query, body.pin, prefix.budget_left
        )
        result = prefix.context(examples, body.max_tokens, body.max_examples)
        metrics.CONTEXT_ITEMS.observe(prefix.items + len(result["examples"]))
        metrics.CONTEXT_TOKENS.observe(result["tokens"])
        answer = {**result, "groups": list(snapshots), "hidden": hidden}
        return Response(orjson.dumps(answer), media_type="application/json")

    return router


def _retired(snapshot: Snapshot | None) -> set[str]:
    return (
        {i["item_id"] for i in snapshot["items"] if i["status"] == "retired"} if snapshot else set()
    )


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
) -> list[tuple[float, MemoryItem]]:
    """Examples similar to the query: from the index for current versions, by scan if pinned.

    None are looked for when not one of the groups' examples fits in ``budget`` (what
    the rules left): the answer would be the same, without the embedding and search.
    """
    if not query or not snapshots:
        return []
    cheapest = (services.memory.cheapest_example(g, s["version"]) for g, s in snapshots.items())
    if min((c for c in cheapest if c is not None), default=budget + 1) > budget:
        return []
    embedder = services.memory.embedder
    try:
        vector = (await embed_off_loop(embedder, lambda: embedder.embed([query]), 10.0))[0]
    except (EmbeddingUnavailable, TimeoutError):
        log.warning("embedder unavailable: context served without examples")
        return []  # the rules prefix still goes out; examples come back with the embedder
    found: list[tuple[float, MemoryItem]] = []
    current_groups = [g for g in snapshots if g not in pins]
    if current_groups:
        # One search for all the caller's groups. The filter names only those groups,
        # and a hit counts only if it is an item of their current snapshots, so
        # nothing outside what the caller may read can come back.
        started = time.perf_counter()
        hits = await services.memory.store.search(
            services.memory.collection,
            vector,
            limit=12,
            where={"facet": [facet(g, k, "active") for g in current_groups for k in EXAMPLE_KINDS]},
            with_payload=False,
        )
        metrics.CONTEXT_SEARCH_SECONDS.observe(time.perf_counter() - started)
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
                vectors = await embed_off_loop(embedder, lambda t=texts: embedder.embed(t), 10.0)
            except (EmbeddingUnavailable, TimeoutError):
                continue
            found.extend((cosine(vector, v), i) for i, v in zip(items, vectors, strict=True))
    return found


def _now_ms() -> int:
    return int(time.time() * 1000)
