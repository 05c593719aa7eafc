"""Memory endpoints: read versions and diffs, and change items (context: ``context_route``).

Reads come from the API's follower of the versions log. Changes are commands
sent through Kafka to the worker that owns the group (its single writer); the
endpoint waits briefly for the outcome so a person sees the new version at once.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from learnloop.api.auth import Caller, CallerDep
from learnloop.api.forget_at_rest import redact_history
from learnloop.api.problems import Problem
from learnloop.errors import BrokerError
from learnloop.settings import Settings
from processors.memory import Snapshot
from processors.memory_ops import as_forgotten, diff, empty_snapshot

if TYPE_CHECKING:
    from learnloop.api.app import Services

log = structlog.get_logger(__name__)
COMMAND_WAIT_S = 10.0


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
        if version is None:
            return snapshot  # the current version: already without every forgotten user
        # an older version reads (and rolls back) as the later forgetting left it
        forgotten = memory.forgotten(group)
        return as_forgotten(snapshot, forgotten) if forgotten else snapshot

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
        headers = memory.headers(group)
        if not headers and not owner_known(group):
            raise Problem(404, "unknown_group", f"no group {group!r}")
        return {
            "group": group,
            "current": memory.current_version(group) or 0,
            "versions": [
                {
                    "version": h.version,
                    "parent": h.parent,
                    "reason": h.reason,
                    "created_ms": h.created_ms,
                    "actor": h.actor,
                    "items": dict(h.items),
                }
                for h in headers
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
        """Forget a user everywhere: every group whose memory or state holds their evidence.

        Each group gets a ``forget_user`` version, and its older versions that name the
        user are written again without them (``versions_rewritten``), so the versions
        topic stops holding them once the broker compacts it.
        """
        who.require("admin")
        groups = {f"user:{user_id}"} if memory.snapshot(f"user:{user_id}") else set()
        for group in memory.groups():
            snapshot = memory.snapshot(group)
            named = snapshot is not None and any(
                user_id in i["provenance"]["user_ids"] for i in snapshot["items"]
            )
            # forgotten there before: a repeated request finishes an interrupted rewrite
            if named or user_id in memory.forgotten(group):
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
            # for every group, not only where something was forgotten now: a request
            # repeated after a failed rewrite finishes it
            try:
                rewritten = await redact_history(
                    memory, services.producer, settings.topics.versions, group, user_id
                )
            except BrokerError as exc:
                raise Problem(
                    503,
                    "broker_unavailable",
                    f"{group}: forgotten, but its older versions were not all rewritten "
                    f"({exc}); send the request again to finish",
                ) from None
            results.append(
                {
                    "group": group,
                    **outcome,
                    "retired_items": retired,
                    "versions_rewritten": len(rewritten),
                }
            )
        return {"user_id": user_id, "groups": results}

    return router


def _retired(snapshot: Snapshot | None) -> set[str]:
    return (
        {i["item_id"] for i in snapshot["items"] if i["status"] == "retired"} if snapshot else set()
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
