"""Forgetting on a clock: which groups need a decay pass, and the command that asks for it.

Items fade with time since their last support (``processors/consolidate.py``), but
consolidation only runs when a group synthesises; a group nobody gives feedback
to any more would keep its stale rules forever. So a timer on each worker asks,
for every group it owns, whether a decay pass would change anything now and, if
so, sends a ``decay`` command through the normal command path: the group's single
writer (the memory agent) applies it as a new version with reason ``decay``.

Pure: the clock is handed in. Command ids are deterministic per group, version and
interval, so two ticks before the first is applied, or a replay, dedupe.
"""

from __future__ import annotations

from processors.consolidate import Change, ConsolidationConfig, decay_items
from processors.memory import MemoryCommand, Snapshot

DECAY_ACTOR = "decay"


def decay_changes(snapshot: Snapshot, now_ms: int, config: ConsolidationConfig) -> list[Change]:
    """What a decay pass would change in this version now (empty: nothing to do)."""
    if not snapshot["items"]:
        return []
    _, changes = decay_items(snapshot["items"], now_ms, config)
    return changes


def decay_command(group: str, version: int, now_ms: int, interval_ms: int) -> MemoryCommand:
    """The command asking a group's writer for a decay pass (one per version and interval)."""
    window = now_ms // max(1, interval_ms)
    return {
        "command_id": f"decay:{group}@{version}:{window}",
        "type": "decay",
        "group": group,
        "created_ms": now_ms,
        "actor": DECAY_ACTOR,
    }


def plan_decay(
    snapshots: list[Snapshot], now_ms: int, config: ConsolidationConfig, interval_ms: int
) -> list[MemoryCommand]:
    """Decay commands for the groups whose memory would change, in group order."""
    return [
        decay_command(s["group"], s["version"], now_ms, interval_ms)
        for s in sorted(snapshots, key=lambda s: s["group"])
        if decay_changes(s, now_ms, config)
    ]
