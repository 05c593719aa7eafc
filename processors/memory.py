"""The memory data model: items, snapshots and the commands that change them.

A group's memory is a list of :class:`MemoryItem`; every change produces a new
immutable :class:`Snapshot` (version, parent, reason). Items are JSON-able dicts
so they travel through Kafka and Faust tables unchanged. Item ids are
deterministic (uuid5 of group, kind and a normalised key) so re-running a
synthesis after a crash produces the same ids: at-least-once, idempotent.
"""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal, NotRequired, TypedDict

ItemKind = Literal["rule", "preferred_example", "avoided_example", "correction", "tool_rule"]
ItemStatus = Literal["active", "proposed", "superseded", "retired", "rejected"]
ITEM_NAMESPACE: Final[uuid.UUID] = uuid.UUID("6f1c9a52-3b1e-4d0a-9a57-1c0f3e7d2b10")


class Provenance(TypedDict):
    """Where an item came from, so a person can see why the agent does something."""

    event_ids: list[str]  # bounded: the most recent supporting events
    user_ids: list[str]  # bounded: distinct supporting users (for forgetting a user)
    distinct_users: int
    synthesizer: str  # "offline" or "llm:<model>"
    prompt_version: str | None
    derived_by: (
        str  # explanation_cluster, edit_diff, rating, engagement, tool_failure_pattern, manual
    )
    trigger_id: str | None
    trigger_reason: str | None


class MemoryItem(TypedDict):
    item_id: str
    group: str
    kind: ItemKind
    text: str  # the rule, or a one-line summary of the example
    status: ItemStatus
    strength: float  # support weight; decays without new support
    support: int  # supporting events, each user's share capped by policy
    tokens: int
    created_ms: int
    updated_ms: int
    last_support_ms: int
    provenance: Provenance
    query: NotRequired[str | None]  # examples and corrections: the prompt
    response: NotRequired[str | None]  # examples: the response; corrections: the original
    corrected: NotRequired[str | None]  # corrections: the user's edited output
    supersedes: NotRequired[str | None]
    superseded_by: NotRequired[str | None]
    note: NotRequired[str | None]  # why it changed status (e.g. "contradicts item X")


class Snapshot(TypedDict):
    """One immutable version of a group's memory."""

    group: str
    version: int
    parent: int | None
    # synthesis:<trigger>, edit, delete, approve, reject, rollback:<v>, reset, forget_user,
    # decay (the periodic pass: items without new support fade and retire)
    reason: str
    created_ms: int
    items: list[MemoryItem]
    actor: NotRequired[str | None]  # who asked for a manual change (API key name)


CommandType = Literal[
    "edit", "delete", "approve", "reject", "rollback", "reset", "forget_user", "decay"
]


class MemoryCommand(TypedDict):
    """A change requested through the API; goes through Kafka to the group's owner."""

    command_id: str
    type: CommandType
    group: str
    created_ms: int
    item_id: NotRequired[str | None]
    changes: NotRequired[dict[str, Any] | None]  # for edit: text, status
    version: NotRequired[int | None]  # for rollback
    user_id: NotRequired[str | None]  # for forget_user
    actor: NotRequired[str | None]


def version_key(group: str, version: int) -> bytes:
    """A version's Kafka key. One per version, so compaction keeps the whole history
    and a version rewritten under its key (a forgetting) replaces the original."""
    return f"{group}#{version:010d}".encode()


def item_id(group: str, kind: str, key: str) -> str:
    """Deterministic id: the same evidence in the same group always gives the same id."""
    return str(uuid.uuid5(ITEM_NAMESPACE, f"{group}\x1f{kind}\x1f{key}"))


def estimate_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token), stable across runs."""
    return max(1, (len(text) + 3) // 4)
