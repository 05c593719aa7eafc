"""Context assembly: the small, cacheable, scoped context an agent gets per request.

Precedence is by scope, narrowest first: ``user`` > derived groups > ``team`` >
``org`` > ``global``. Rules of a wider scope that a narrower scope's rule
supersedes or contradicts are dropped. The ``prefix`` depends only on the
memory versions used (never on the query), is rendered in a stable order, and so
is byte-identical between memory changes: prompt caches keep hitting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from processors.groups import scope_of
from processors.memory import MemoryItem, Snapshot, estimate_tokens

SCOPE_RANK = {"user": 0, "team": 2, "org": 3, "global": 4}  # derived kinds rank 1
PREFIX_KINDS = ("rule", "tool_rule")
EXAMPLE_KINDS = ("preferred_example", "avoided_example", "correction")
HEADER = "Learned guidance (from feedback; narrower scopes take precedence):"


class ContextItem(TypedDict):
    item_id: str
    group: str
    kind: str
    text: str
    version: int
    tokens: int


class Context(TypedDict):
    prefix: str
    examples: list[dict[str, Any]]
    versions: dict[str, int]
    items: list[ContextItem]
    dropped: list[dict[str, str]]
    tokens: int


def scope_rank(group: str) -> int:
    return SCOPE_RANK.get(scope_of(group), 1)


def order_groups(groups: Sequence[str]) -> list[str]:
    """Narrowest first; ties broken by name so the order never depends on input order."""
    return sorted(set(groups), key=lambda g: (scope_rank(g), g))


def assemble(
    snapshots: Mapping[str, Snapshot],
    examples: Sequence[tuple[float, MemoryItem]],
    max_tokens: int,
    conflicts: Callable[[MemoryItem, MemoryItem], bool],
    max_examples: int = 4,
) -> Context:
    """Merge the groups' active rules by precedence, fit the budget, attach examples.

    ``examples`` are ``(similarity, item)`` pairs already retrieved for the query
    from the caller's groups; ``conflicts(narrow, wide)`` says whether a narrower
    rule overrides a wider one.
    """
    versions = {group: snapshots[group]["version"] for group in order_groups(list(snapshots))}
    chosen: list[ContextItem] = []
    chosen_items: list[MemoryItem] = []
    dropped: list[dict[str, str]] = []
    budget = max_tokens - estimate_tokens(HEADER)
    for group in versions:
        rules = sorted(
            (
                i
                for i in snapshots[group]["items"]
                if i["status"] == "active" and i["kind"] in PREFIX_KINDS
            ),
            key=lambda i: (-i["strength"], i["item_id"]),
        )
        for item in rules:
            overridden = next((c for c in chosen_items if conflicts(c, item)), None)
            if overridden is not None:
                dropped.append(
                    {
                        "item_id": item["item_id"],
                        "group": group,
                        "reason": f"overridden by {overridden['item_id']} in {overridden['group']}",
                    }
                )
                continue
            if item["tokens"] > budget:
                dropped.append(
                    {"item_id": item["item_id"], "group": group, "reason": "over the token budget"}
                )
                continue
            budget -= item["tokens"]
            chosen_items.append(item)
            chosen.append(
                {
                    "item_id": item["item_id"],
                    "group": group,
                    "kind": item["kind"],
                    "text": item["text"],
                    "version": versions[group],
                    "tokens": item["tokens"],
                }
            )
    lines = [HEADER] + [f"- [{c['group']}] {c['text']}" for c in chosen] if chosen else []
    prefix = "\n".join(lines)
    picked: list[dict[str, Any]] = []
    for score, item in sorted(examples, key=lambda e: (-e[0], e[1]["item_id"])):
        if len(picked) >= max_examples or item["group"] not in versions:
            continue
        if item["status"] != "active" or item["kind"] not in EXAMPLE_KINDS:
            continue
        cost = item["tokens"]
        if cost > budget:
            continue
        budget -= cost
        picked.append(
            {
                "item_id": item["item_id"],
                "group": item["group"],
                "kind": item["kind"],
                "text": item["text"],
                "query": item.get("query"),
                "response": item.get("response"),
                "corrected": item.get("corrected"),
                "score": round(score, 4),
            }
        )
    used = max_tokens - budget
    return {
        "prefix": prefix,
        "examples": picked,
        "versions": versions,
        "items": chosen,
        "dropped": dropped,
        "tokens": used,
    }
