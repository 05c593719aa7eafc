"""Applying syntheses and commands to a group's memory, one immutable version at a time.

``apply(state, change) -> (state, outputs)``: the state is the group's current
snapshot; every accepted change returns the next snapshot (version + 1, parent,
reason, timestamp). A change that cannot apply returns the state unchanged and
a rejection saying why, so the API can tell the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypedDict

from processors.consolidate import ConsolidationConfig, decay_items
from processors.memory import MemoryCommand, MemoryItem, Snapshot

EDITABLE_FIELDS = frozenset({"text", "status"})
SETTABLE_STATUSES = frozenset({"active", "retired", "rejected", "proposed"})


class Rejection(TypedDict):
    command_id: str
    group: str
    reason: str


def empty_snapshot(group: str) -> Snapshot:
    return {
        "group": group,
        "version": 0,
        "parent": None,
        "reason": "empty",
        "created_ms": 0,
        "items": [],
    }


def next_snapshot(
    current: Snapshot,
    items: Sequence[MemoryItem],
    reason: str,
    now_ms: int,
    actor: str | None = None,
) -> Snapshot:
    """The version after ``current`` with these items."""
    return {
        "group": current["group"],
        "version": current["version"] + 1,
        "parent": current["version"] if current["version"] else None,
        "reason": reason,
        "created_ms": now_ms,
        "items": [dict(item) for item in items],  # type: ignore[misc]
        "actor": actor,
    }


def _find(items: Sequence[MemoryItem], item_id: str) -> MemoryItem | None:
    return next((item for item in items if item["item_id"] == item_id), None)


def _replace(items: Sequence[MemoryItem], new: MemoryItem) -> list[MemoryItem]:
    return [new if item["item_id"] == new["item_id"] else item for item in items]


def apply_command(
    current: Snapshot,
    command: MemoryCommand,
    now_ms: int,
    rollback_items: Sequence[MemoryItem] | None = None,
    decay_config: ConsolidationConfig | None = None,
) -> tuple[Snapshot, Rejection | None]:
    """Apply one command; ``rollback_items`` are the target version's items (from the log).

    ``decay`` (sent by the decay timer) needs ``decay_config``: it makes a version only
    when some item actually faded, retired or was evicted.
    """
    kind = command["type"]
    actor = command.get("actor")
    items = current["items"]

    def reject(reason: str) -> tuple[Snapshot, Rejection]:
        return current, {
            "command_id": command["command_id"],
            "group": current["group"],
            "reason": reason,
        }

    if kind in ("edit", "delete", "approve", "reject"):
        target_id = command.get("item_id") or ""
        target = _find(items, target_id)
        if target is None:
            return reject(f"item {target_id} is not in version {current['version']}")
        changed: MemoryItem = dict(target)  # type: ignore[assignment]
        changed["updated_ms"] = now_ms
        if kind == "delete":
            remaining = [item for item in items if item["item_id"] != target_id]
            return next_snapshot(current, remaining, "delete", now_ms, actor), None
        if kind == "approve":
            if target["status"] != "proposed":
                return reject(f"item {target_id} is {target['status']}, not proposed")
            changed["status"] = "active"
            changed["note"] = f"approved by {actor or 'an operator'}"
        elif kind == "reject":
            if target["status"] != "proposed":
                return reject(f"item {target_id} is {target['status']}, not proposed")
            changed["status"] = "rejected"
            changed["note"] = f"rejected by {actor or 'an operator'}"
        else:
            changes = command.get("changes") or {}
            unknown = set(changes) - EDITABLE_FIELDS
            if unknown:
                return reject(f"cannot edit {', '.join(sorted(unknown))}")
            if "status" in changes and changes["status"] not in SETTABLE_STATUSES:
                return reject(f"status {changes['status']!r} cannot be set by hand")
            if "text" in changes:
                text = str(changes["text"]).strip()
                if not text:
                    return reject("text must not be empty")
                changed["text"] = text
            if "status" in changes:
                changed["status"] = changes["status"]
            changed["note"] = f"edited by {actor or 'an operator'}"
        return next_snapshot(current, _replace(items, changed), kind, now_ms, actor), None
    if kind == "rollback":
        version = command.get("version")
        if rollback_items is None or version is None:
            return reject("rollback needs the target version's items")
        if not 0 <= version <= current["version"]:
            return reject(f"version {version} does not exist")
        return next_snapshot(current, rollback_items, f"rollback:{version}", now_ms, actor), None
    if kind == "decay":
        if decay_config is None:
            return reject("decay needs the consolidation settings")
        decayed, faded = decay_items(list(items), now_ms, decay_config)
        if not faded:
            return reject("nothing to decay")
        return next_snapshot(current, decayed, "decay", now_ms, actor), None
    if kind == "reset":
        return next_snapshot(current, [], "reset", now_ms, actor), None
    if kind == "forget_user":
        user = command.get("user_id") or ""
        kept, retired = forget_user(items, user, now_ms)
        if not retired and all(user not in item["provenance"]["user_ids"] for item in items):
            return reject(f"no item of {current['group']} has evidence from that user")
        return next_snapshot(current, kept, "forget_user", now_ms, actor), None
    return reject(f"unknown command type {kind!r}")


def forget_user(
    items: Sequence[MemoryItem], user_id: str, now_ms: int
) -> tuple[list[MemoryItem], list[str]]:
    """Remove a user from every item's provenance; retire items only they supported."""
    kept: list[MemoryItem] = []
    retired: list[str] = []
    for item in items:
        provenance = item["provenance"]
        if user_id not in provenance["user_ids"]:
            kept.append(item)
            continue
        changed: MemoryItem = dict(item)  # type: ignore[assignment]
        others = [u for u in provenance["user_ids"] if u != user_id]
        changed["provenance"] = {
            **provenance,
            "user_ids": others,
            "distinct_users": max(0, provenance["distinct_users"] - 1),
        }
        changed["updated_ms"] = now_ms
        if not others:
            retired.append(item["item_id"])
            changed["status"] = "retired"
            changed["note"] = "only the forgotten user supported it"
            # an item that only one user supported may quote them: drop the text too
            changed["text"] = "[retired: its only supporter was forgotten]"
            for field in ("query", "response", "corrected"):
                if field in changed:
                    changed[field] = None
            changed["provenance"] = {**changed["provenance"], "event_ids": []}
        kept.append(changed)
    return kept, retired


def forgotten_users(history: Sequence[Snapshot]) -> dict[str, int]:
    """Each user a ``forget_user`` version removed, with the first such version.

    Read off the history itself (the users in a forget version's parent and not in
    it), so no list of forgotten ids has to be stored anywhere.
    """
    by_version = {snapshot["version"]: snapshot for snapshot in history}
    removed: dict[int, set[str]] = {}
    for snapshot in history:
        parent = by_version.get(snapshot["parent"] or 0)
        if parent is not None:
            removed[snapshot["version"]] = forgotten_by(parent, snapshot)
    return first_forgetting(removed)


def forgotten_by(parent: Snapshot, forgetting: Snapshot) -> set[str]:
    """The users a ``forget_user`` version removed from its parent (none for other kinds)."""
    if forgetting["reason"] != "forget_user":
        return set()
    return _users(parent) - _users(forgetting)


def first_forgetting(removed: Mapping[int, Iterable[str]]) -> dict[str, int]:
    """Each user in ``removed`` (forget version -> users it removed) with its first version."""
    forgotten: dict[str, int] = {}
    for version in sorted(removed):
        for user in removed[version]:
            forgotten.setdefault(user, version)
    return forgotten


def as_forgotten(snapshot: Snapshot, forgotten: Mapping[str, int]) -> Snapshot:
    """``snapshot`` as it must read after the forgetting that came later.

    A version older than a user's ``forget_user`` version is shown (and rolled back
    to) without them, as that version retired or trimmed their items; their later
    contributions, in versions after it, are theirs to keep.
    """
    items: Sequence[MemoryItem] = snapshot["items"]
    for user, version in forgotten.items():
        if snapshot["version"] < version and user in _users(snapshot):
            items, _ = forget_user(items, user, snapshot["created_ms"])
    if items is snapshot["items"]:
        return snapshot
    return {**snapshot, "items": list(items)}


def _users(snapshot: Snapshot) -> set[str]:
    return {user for item in snapshot["items"] for user in item["provenance"]["user_ids"]}


def diff(before: Snapshot, after: Snapshot) -> dict[str, list[dict[str, object]]]:
    """What changed between two versions: items added, removed, and changed field by field."""
    old = {item["item_id"]: item for item in before["items"]}
    new = {item["item_id"]: item for item in after["items"]}
    changed: list[dict[str, object]] = []
    for key in sorted(old.keys() & new.keys()):
        fields = sorted(
            f
            for f in ("text", "status", "strength", "support", "kind")
            if old[key].get(f) != new[key].get(f)
        )
        if fields:
            changed.append(
                {
                    "item_id": key,
                    "fields": fields,
                    "before": {f: old[key].get(f) for f in fields},
                    "after": {f: new[key].get(f) for f in fields},
                }
            )
    return {
        "added": [dict(new[k]) for k in sorted(new.keys() - old.keys())],
        "removed": [dict(old[k]) for k in sorted(old.keys() - new.keys())],
        "changed": changed,
    }
