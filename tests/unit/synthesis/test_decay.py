"""Decay on a clock: the plan the timer makes and the version the command produces."""

from __future__ import annotations

import pytest

from processors.consolidate import DAY_MS, ConsolidationConfig
from processors.decay import decay_changes, decay_command, plan_decay
from processors.memory import Snapshot
from processors.memory_ops import apply_command, empty_snapshot, next_snapshot
from tests.unit.synthesis.helpers import T0
from tests.unit.synthesis.test_consolidate import rule

CONFIG = ConsolidationConfig(decay_half_life_ms=10 * DAY_MS, retire_below=0.25)
HOUR_MS = 3_600_000


def snapshot(group: str, *items_at: int) -> Snapshot:
    items = [
        rule(f"Use the v{n + 2} API.", group=group, strength=1.0, at=at)
        for n, at in enumerate(items_at)
    ]
    return next_snapshot(empty_snapshot(group), items, "synthesis:evidence", T0)


def test_only_groups_whose_items_faded_get_a_command() -> None:
    fresh = snapshot("team:fresh", T0 + 10 * DAY_MS)
    stale = snapshot("team:stale", T0)
    empty = empty_snapshot("team:empty")
    now = T0 + 10 * DAY_MS
    commands = plan_decay([stale, fresh, empty], now, CONFIG, HOUR_MS)
    assert [c["group"] for c in commands] == ["team:stale"]
    assert commands[0]["type"] == "decay"
    assert commands[0]["command_id"] == f"decay:team:stale@1:{now // HOUR_MS}"
    # the same plan within the same interval has the same id (deduped by the writer)
    assert plan_decay([stale], now + 1_000, CONFIG, HOUR_MS) == [
        {**commands[0], "created_ms": now + 1_000}
    ]
    assert decay_changes(fresh, now, CONFIG) == []


def test_a_decay_command_makes_a_decay_version_and_then_a_retirement() -> None:
    current = snapshot("team:search", T0)
    command = decay_command("team:search", current["version"], T0 + 10 * DAY_MS, HOUR_MS)
    after, rejection = apply_command(current, command, T0 + 10 * DAY_MS, decay_config=CONFIG)
    assert rejection is None
    assert (after["version"], after["parent"], after["reason"]) == (2, 1, "decay")
    assert after["actor"] == "decay"
    assert after["items"][0]["strength"] == pytest.approx(0.5)
    assert after["items"][0]["status"] == "active"
    assert current["items"][0]["strength"] == 1.0  # versions are immutable
    later = T0 + 30 * DAY_MS
    retired, rejection = apply_command(
        after, decay_command("team:search", 2, later, HOUR_MS), later, decay_config=CONFIG
    )
    assert rejection is None and retired["reason"] == "decay"
    assert retired["items"][0]["status"] == "retired"
    assert "without new support" in (retired["items"][0].get("note") or "")


def test_nothing_to_decay_makes_no_version() -> None:
    current = snapshot("team:search", T0)
    command = decay_command("team:search", 1, T0 + HOUR_MS, HOUR_MS)
    same, rejection = apply_command(current, command, T0 + HOUR_MS, decay_config=CONFIG)
    assert same is current
    assert rejection is not None and rejection["reason"] == "nothing to decay"
    _, rejection = apply_command(current, command, T0 + 20 * DAY_MS)
    assert rejection is not None  # the writer must hand in the consolidation settings


def test_manual_items_never_decay() -> None:
    current = snapshot("team:search", T0)
    current["items"][0]["provenance"]["derived_by"] = "manual"
    assert plan_decay([current], T0 + 100 * DAY_MS, CONFIG, HOUR_MS) == []
