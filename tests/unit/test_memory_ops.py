"""Versions, commands, diff and context assembly on plain data."""

from __future__ import annotations

from processors.context import assemble, order_groups
from processors.memory import MemoryItem, Snapshot, estimate_tokens, item_id
from processors.memory_ops import (
    apply_command,
    as_forgotten,
    diff,
    empty_snapshot,
    forgotten_users,
    next_snapshot,
)


def item(
    group: str,
    text: str,
    kind: str = "rule",
    status: str = "active",
    users: list[str] | None = None,
    strength: float = 1.0,
) -> MemoryItem:
    users = users or ["alice"]
    return {
        "item_id": item_id(group, kind, text),
        "group": group,
        "kind": kind,
        "text": text,
        "status": status,
        "strength": strength,
        "support": len(users),
        "tokens": estimate_tokens(text),
        "created_ms": 0,
        "updated_ms": 0,
        "last_support_ms": 0,
        "provenance": {
            "event_ids": ["e1"],
            "user_ids": users,
            "distinct_users": len(users),
            "synthesizer": "offline",
            "prompt_version": None,
            "derived_by": "explanation_cluster",
            "trigger_id": "t",
            "trigger_reason": "evidence",
        },
    }


def command(kind: str, **extra) -> dict:
    return {"command_id": f"c-{kind}", "type": kind, "group": "team:a", "created_ms": 1, **extra}


def snap(*items: MemoryItem, group: str = "team:a") -> Snapshot:
    return next_snapshot(empty_snapshot(group), list(items), "synthesis:evidence", 10)


def test_versions_chain_with_parent_and_reason() -> None:
    first = snap(item("team:a", "Use the v2 API."))
    second, rejection = apply_command(first, command("reset"), 20)
    assert rejection is None
    assert (first["version"], first["parent"]) == (1, None)
    assert (second["version"], second["parent"], second["reason"]) == (2, 1, "reset")
    assert second["items"] == [] and first["items"]  # the old version is untouched


def test_edit_approve_delete_and_rejections() -> None:
    rule = item("team:a", "Use the v2 API.", status="proposed")
    current = snap(rule)
    edited, _ = apply_command(
        current, command("edit", item_id=rule["item_id"], changes={"text": "Use v2."}), 20
    )
    assert edited["items"][0]["text"] == "Use v2."
    approved, _ = apply_command(edited, command("approve", item_id=rule["item_id"]), 30)
    assert approved["items"][0]["status"] == "active"
    again, rejection = apply_command(approved, command("approve", item_id=rule["item_id"]), 40)
    assert again is approved and rejection and "not proposed" in rejection["reason"]
    _, rejection = apply_command(
        approved, command("edit", item_id=rule["item_id"], changes={"strength": 9}), 40
    )
    assert rejection and "strength" in rejection["reason"]
    deleted, _ = apply_command(approved, command("delete", item_id=rule["item_id"]), 50)
    assert deleted["items"] == []
    _, rejection = apply_command(deleted, command("delete", item_id="nope"), 60)
    assert rejection is not None


def test_rollback_restores_exact_items() -> None:
    v1 = snap(item("team:a", "Use the v2 API."), item("team:a", "Answer in German."))
    v2, _ = apply_command(v1, command("reset"), 20)
    v3, rejection = apply_command(
        v2, command("rollback", version=1), 30, rollback_items=v1["items"]
    )
    assert rejection is None
    assert v3["items"] == v1["items"] and v3["reason"] == "rollback:1" and v3["version"] == 3


def test_forget_user_retires_items_only_they_support() -> None:
    mine = item("team:a", "Never mention Bob's phone.", users=["mallory"])
    shared = item("team:a", "Use the v2 API.", users=["mallory", "alice"])
    after, rejection = apply_command(
        snap(mine, shared), command("forget_user", user_id="mallory"), 20
    )
    assert rejection is None
    by_id = {i["item_id"]: i for i in after["items"]}
    assert by_id[mine["item_id"]]["status"] == "retired"
    assert "Bob" not in by_id[mine["item_id"]]["text"]
    assert by_id[shared["item_id"]]["status"] == "active"
    assert by_id[shared["item_id"]]["provenance"]["user_ids"] == ["alice"]


def test_versions_before_a_forget_read_and_roll_back_without_the_user() -> None:
    """Rolling back past a ``forget_user`` must not bring the user's words back, and
    reading an older version must not show them; what they add later is kept."""
    mine = item("team:a", "Bob says: use my card 4111.", users=["bob"])
    shared = item("team:a", "Use the v2 API.", users=["bob", "alice"])
    v1 = snap(mine, shared)
    v2, _ = apply_command(v1, command("forget_user", user_id="bob"), 20)
    history = [v1, v2]
    assert forgotten_users(history) == {"bob": 2}
    old = as_forgotten(v1, forgotten_users(history))
    assert "4111" not in str(old["items"]) and "bob" not in str(old["items"])
    assert old["version"] == 1 and v1["items"][0]["text"] == mine["text"]  # v1 itself unchanged
    v3, rejection = apply_command(v2, command("rollback", version=1), 30,
                                  rollback_items=old["items"])
    assert rejection is None and "4111" not in str(v3["items"])
    later = item("team:a", "Answer in French.", users=["bob"])  # bob came back and taught
    v4, _ = apply_command(v3, command("reset"), 40)
    v5 = next_snapshot(v4, [later], "synthesis:evidence", 50)
    assert as_forgotten(v5, forgotten_users([v1, v2, v3, v4, v5])) is v5


def test_diff_names_added_removed_changed() -> None:
    a, b = item("team:a", "Use v2."), item("team:a", "Answer in German.")
    v1 = snap(a, b)
    v2, _ = apply_command(
        v1, command("edit", item_id=a["item_id"], changes={"status": "retired"}), 20
    )
    v3, _ = apply_command(v2, command("delete", item_id=b["item_id"]), 30)
    result = diff(v1, v3)
    assert [r["item_id"] for r in result["removed"]] == [b["item_id"]]
    assert result["changed"][0]["fields"] == ["status"]
    assert result["added"] == []


def never(_: MemoryItem, __: MemoryItem) -> bool:
    return False


def test_prefix_is_stable_and_ordered_by_precedence() -> None:
    snapshots = {
        "global": snap(item("global", "Be concise."), group="global"),
        "user:alice": snap(item("user:alice", "Answer in German."), group="user:alice"),
        "team:a": snap(item("team:a", "Use the v2 API."), group="team:a"),
    }
    first = assemble(snapshots, [], 800, never)
    shuffled = assemble(dict(reversed(list(snapshots.items()))), [], 800, never)
    assert first["prefix"] == shuffled["prefix"]
    assert (
        first["prefix"].index("German")
        < first["prefix"].index("v2")
        < first["prefix"].index("concise")
    )
    assert list(first["versions"]) == order_groups(list(snapshots))


def test_narrower_scope_overrides_conflicting_wider_rule() -> None:
    snapshots = {
        "team:a": snap(item("team:a", "Answer in English."), group="team:a"),
        "user:alice": snap(item("user:alice", "Answer in German."), group="user:alice"),
    }
    context = assemble(
        snapshots, [], 800, lambda a, b: "Answer" in a["text"] and "Answer" in b["text"]
    )
    assert "German" in context["prefix"] and "English" not in context["prefix"]
    assert context["dropped"][0]["reason"].startswith("overridden by")


def test_budget_is_respected() -> None:
    many = [
        item("team:a", f"Rule number {n} with quite a lot of words in it.", strength=n)
        for n in range(50)
    ]
    context = assemble({"team:a": snap(*many)}, [], 100, never)
    assert context["tokens"] <= 100
    assert 0 < len(context["items"]) < 50
    assert any(d["reason"] == "over the token budget" for d in context["dropped"])


def test_examples_follow_the_query_and_skip_inactive() -> None:
    good = item("team:a", "Good answer about keys", kind="preferred_example")
    retired = item("team:a", "Old example", kind="preferred_example", status="retired")
    context = assemble({"team:a": snap(good, retired)}, [(0.9, good), (0.95, retired)], 800, never)
    assert [e["item_id"] for e in context["examples"]] == [good["item_id"]]
    assert context["prefix"] == ""
