"""Context assembly: the small, cacheable, scoped context an agent gets per request.

Precedence is by scope, narrowest first: ``user`` > derived groups > ``team`` >
``org`` > ``global``. Rules of a wider scope that a narrower scope's rule
supersedes or contradicts are left out of the prefix and listed in ``dropped``
with the rule that overrode them. The ``prefix`` depends only on the
memory versions used (never on the query), is rendered in a stable order, and so
is byte-identical between memory changes: prompt caches keep hitting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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


class Prefix(TypedDict):
    """The query-independent part of a context: a pure function of the snapshots and budget.

    Because nothing else goes in, it may be cached per ``(group, version)`` selection
    and budget, and reused for any caller who selected exactly those snapshots.
    """

    prefix: str
    versions: dict[str, int]
    items: list[ContextItem]
    dropped: list[dict[str, str]]
    budget_left: int


def scope_rank(group: str) -> int:
    return SCOPE_RANK.get(scope_of(group), 1)


def order_groups(groups: Sequence[str]) -> list[str]:
    """Narrowest first; ties broken by name so the order never depends on input order."""
    return sorted(set(groups), key=lambda g: (scope_rank(g), g))


ConflictKeys = Callable[[MemoryItem], tuple[Sequence[str], Sequence[str]]]
"""``item -> (offers, seeks)``: ``conflicts(narrow, wide)`` can only hold if
``offers(narrow)`` and ``seeks(wide)`` share a key (a necessary condition)."""


def assemble_prefix(
    snapshots: Mapping[str, Snapshot],
    max_tokens: int,
    conflicts: Callable[[MemoryItem, MemoryItem], bool],
    keys: ConflictKeys | None = None,
) -> Prefix:
    """Merge the groups' active rules by precedence and fit the budget.

    Groups are taken narrowest first; a rule is checked with ``conflicts(narrow,
    wide)`` against the rules already chosen from *earlier* (narrower, or equally
    wide and sorted first) groups, never against rules of its own group: within a
    group, consolidation has already settled contradictions. A rule that loses is
    left out and listed in ``dropped`` with the id and group of the rule that won
    (the first narrower rule, in prefix order, that contradicts it).

    ``keys`` only saves work: narrower rules that share no key with the wide rule
    are not asked, and the answer is the same as without it. Without it, four groups
    of 50 rules cost ~15,000 ``conflicts`` calls (about 50 ms with the text checks).
    """
    versions = {group: snapshots[group]["version"] for group in order_groups(list(snapshots))}
    chosen: list[ContextItem] = []
    narrower: list[MemoryItem] = []  # rules chosen from the groups before this one
    offered: dict[str, list[int]] = {}  # key -> positions in `narrower` that offer it
    last = next(reversed(versions), None)
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
        taken: list[MemoryItem] = []
        for item in rules:
            candidates: Iterable[MemoryItem] = narrower
            if keys is not None and narrower:
                seeks = keys(item)[1]
                positions = {i for key in seeks for i in offered.get(key, ())}
                candidates = (narrower[i] for i in sorted(positions))
            overridden = next((c for c in candidates if conflicts(c, item)), None)
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
            taken.append(item)
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
        for item in taken:
            if keys is not None and group != last:  # only wider groups ask for offers
                for key in keys(item)[0]:
                    offered.setdefault(key, []).append(len(narrower))
            narrower.append(item)
    lines = [HEADER] + [f"- [{c['group']}] {c['text']}" for c in chosen] if chosen else []
    return {
        "prefix": "\n".join(lines),
        "versions": versions,
        "items": chosen,
        "dropped": dropped,
        "budget_left": budget,
    }


def pick_examples(
    versions: Mapping[str, int],
    budget: int,
    examples: Sequence[tuple[float, MemoryItem]],
    max_examples: int = 4,
) -> tuple[list[dict[str, Any]], int]:
    """The best examples that fit ``budget``, and the budget they leave.

    ``examples`` are ``(similarity, item)`` pairs retrieved for the query from the
    caller's groups (``versions``); best first, ties by id.
    """
    picked: list[dict[str, Any]] = []
    for score, item in sorted(examples, key=lambda e: (-e[0], e[1]["item_id"])):
        if len(picked) >= max_examples:
            break
        if item["group"] not in versions:
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
    return picked, budget


def attach_examples(
    prefix: Prefix,
    examples: Sequence[tuple[float, MemoryItem]],
    max_tokens: int,
    max_examples: int = 4,
) -> Context:
    """The context: ``prefix`` (not modified, it may be shared) plus the best examples
    that fit in what the rules left of the budget."""
    picked, budget = pick_examples(
        prefix["versions"], prefix["budget_left"], examples, max_examples
    )
    return {
        "prefix": prefix["prefix"],
        "examples": picked,
        "versions": dict(prefix["versions"]),
        "items": list(prefix["items"]),
        "dropped": list(prefix["dropped"]),
        "tokens": max_tokens - budget,
    }


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
    return attach_examples(
        assemble_prefix(snapshots, max_tokens, conflicts), examples, max_tokens, max_examples
    )
