"""Consolidation: merge new candidates into a group's memory without letting it grow.

The context an agent receives must not grow with history, and stale or overruled
knowledge must stop steering it. So, for one group:

- a candidate with the id of a live item, or a near-duplicate of one (same kind,
  cosine >= ``merge_threshold``), is merged into it: the older id and text stay (a
  stable prompt), provenance is unioned (bounded) and support adds up;
- a rule that contradicts a live one ("use X" / "don't use X", "answer in German" /
  "answer in English", "A over B" / "B over A") supersedes it, and both say so;
- strength decays exponentially with time since the last support; below
  ``retire_below`` an item is retired (kept for history, capped, never in prompts);
- live (active + proposed) items are capped in number and in tokens; the weakest
  are evicted first.

Pure: the clock is ``now_ms`` and every change is reported as a :class:`Change`.
Calling it with no candidates is a decay pass.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Final, Literal, TypedDict

from processors.embedding import Embedder, cosine, normalise
from processors.memory import MemoryItem, item_id
from processors.synthesis.base import KIND_ORDER, MAX_EVENT_IDS, MAX_USER_IDS
from processors.synthesis.text import choice_values, contradiction, exclusive_values, rule_shape

DAY_MS: Final = 86_400_000
LIVE: Final = frozenset({"active", "proposed"})
EXAMPLE_KINDS: Final = frozenset({"preferred_example", "avoided_example"})
RULE_KINDS: Final = frozenset({"rule", "tool_rule"})

ChangeAction = Literal["added", "merged", "superseded", "retired", "evicted", "decayed"]
# rated answers it takes to call a rule's choice outdated: down-votes of answers using
# its value, and up-votes of answers using another value of the same kind
MIN_RATED_AGAINST: Final = 2
MIN_RATED_FOR_OTHER: Final = 1
# kinds whose values an answer names only when it uses them ("140 euros", "run pnpm add");
# not "length" or "time", whose words ("a short walk", "a local guide") come up anyway
NAMED_CHOICES: Final = frozenset(
    {"currency", "language", "js_package_manager", "py_package_manager", "units", "temperature"}
)


class Statement(TypedDict):
    """Something a person said in the trigger's evidence (an explanation), for withdrawals."""

    user_id: str
    text: str
    timestamp: int


class Change(TypedDict):
    item_id: str
    action: ChangeAction
    detail: str


@dataclass(frozen=True, slots=True)
class ConsolidationConfig:
    """Per-group bounds and thresholds (the defaults suit the hashing embedder)."""

    max_items: int = 50  # active + proposed
    token_budget: int = 800  # active + proposed, by estimate_tokens
    merge_threshold: float = 0.75  # cosine of two items of one kind to count as one
    detect_contradictions: bool = True
    # a low cosine floor: the structural check (same objects, or the same subject with an
    # exclusive value such as a language) is what decides; this only skips unrelated pairs
    # (not for exclusive values: "Euros." and "Prices in Swiss francs." share no word)
    contradiction_threshold: float = 0.1
    decay_half_life_ms: int = 30 * DAY_MS
    decay_min_step: float = 0.05  # apply (and report) decay once it is 5% or more
    retire_below: float = 0.25
    # support saturates: a very popular item must still fade once nobody supports it any more
    max_strength: float = 20.0
    max_history: int = 50  # superseded, retired and rejected items kept for inspection


def _example_key(item: MemoryItem) -> str:
    query, response = item.get("query") or "", item.get("response") or ""
    joined = normalise(query).strip() + "\x1f" + normalise(response).strip()
    return blake2b(joined.encode("utf-8"), digest_size=12).hexdigest()


def _order(item: MemoryItem) -> tuple[int, float, str]:
    return (KIND_ORDER.get(item["kind"], 99), -item["strength"], item["item_id"])


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class _Vectors:
    """Embeddings of item texts, computed once per call in one batch."""

    def __init__(self, embedder: Embedder, texts: Sequence[str]) -> None:
        self.embedder = embedder
        unique = sorted(set(texts))
        self.cache = dict(zip(unique, embedder.embed(unique), strict=True))

    def similarity(self, a: str, b: str) -> float:
        for text in (a, b):
            if text not in self.cache:
                self.cache[text] = self.embedder.embed([text])[0]
        return cosine(self.cache[a], self.cache[b])


def _decay(item: MemoryItem, now_ms: int, config: ConsolidationConfig) -> Change | None:
    """Exponential decay since the last support (memoryless, so applying it in steps is exact)."""
    if item["provenance"].get("derived_by") == "manual" or config.decay_half_life_ms <= 0:
        return None  # a person wrote it; only a person retires it
    anchor = max(item["last_support_ms"], item["updated_ms"])
    elapsed = now_ms - anchor
    if elapsed <= 0:
        return None
    factor = 0.5 ** (elapsed / config.decay_half_life_ms)
    before = item["strength"]
    after = round(before * factor, 6)
    days = (now_ms - item["last_support_ms"]) / DAY_MS
    if after < config.retire_below:
        item["strength"] = after
        item["status"] = "retired"
        item["updated_ms"] = now_ms
        note = (
            f"retired: strength {after:.3f} fell below {config.retire_below:g} "
            f"after {days:.1f} days without new support"
        )
        item["note"] = note
        return {"item_id": item["item_id"], "action": "retired", "detail": note}
    if 1.0 - factor < config.decay_min_step:
        return None
    item["strength"] = after
    item["updated_ms"] = now_ms
    detail = f"strength {before:.3f} -> {after:.3f} ({days:.1f} days since last support)"
    return {"item_id": item["item_id"], "action": "decayed", "detail": detail}


def _merge(
    into: MemoryItem, candidate: MemoryItem, now_ms: int, how: str, max_strength: float
) -> Change | None:
    """Fold ``candidate``'s support into ``into``; None if it brought no new events (a replay)."""
    prov, other = into["provenance"], candidate["provenance"]
    new_events = [e for e in other["event_ids"] if e not in prov["event_ids"]]
    if other["event_ids"] and not new_events:
        return None
    share = len(new_events) / len(other["event_ids"]) if other["event_ids"] else 1.0
    into["strength"] = round(min(max_strength, into["strength"] + candidate["strength"] * share), 6)
    into["support"] += max(1, round(candidate["support"] * share))
    into["last_support_ms"] = max(into["last_support_ms"], candidate["last_support_ms"])
    into["updated_ms"] = now_ms
    prov["event_ids"] = (prov["event_ids"] + new_events)[-MAX_EVENT_IDS:]
    users = sorted(set(prov["user_ids"]) | set(other["user_ids"]))
    prov["user_ids"] = users[:MAX_USER_IDS]
    prov["distinct_users"] = max(len(users), prov["distinct_users"], other["distinct_users"])
    prov["trigger_id"] = other["trigger_id"]
    prov["trigger_reason"] = other["trigger_reason"]
    detail = f"{candidate['item_id']} merged ({how}); +{len(new_events)} event(s)"
    return {"item_id": into["item_id"], "action": "merged", "detail": detail}


def _supersede(old: MemoryItem, new: MemoryItem, reason: str, now_ms: int) -> Change:
    old["status"] = "superseded"
    old["superseded_by"] = new["item_id"]
    old["updated_ms"] = now_ms
    note = f"superseded by {new['item_id']} ({reason}): {_short(new['text'])}"
    old["note"] = note
    if not new.get("supersedes"):
        new["supersedes"] = old["item_id"]
    return {"item_id": old["item_id"], "action": "superseded", "detail": note}


def _contradicted(
    candidate: MemoryItem, live: list[MemoryItem], vectors: _Vectors, config: ConsolidationConfig
) -> list[tuple[MemoryItem, str]]:
    """Live items the candidate overrules, strongest first, with the reason."""
    found: list[tuple[MemoryItem, str]] = []
    if candidate["kind"] in EXAMPLE_KINDS:
        key = _example_key(candidate)
        for item in live:
            opposite = item["kind"] in EXAMPLE_KINDS and item["kind"] != candidate["kind"]
            if opposite and _example_key(item) == key:
                found.append((item, f"now {candidate['kind'].replace('_', ' ')}"))
    elif candidate["kind"] in RULE_KINDS and config.detect_contradictions:
        for item in live:
            if item["kind"] != candidate["kind"] or item["item_id"] == candidate["item_id"]:
                continue
            reason = contradiction(candidate["text"], item["text"])
            if reason is None:
                continue
            # another value of an exclusive choice decides on its own: "Euros." and "Prices
            # in Swiss francs." share no word, yet the second replaces the first
            exclusive = reason.startswith("exclusive_choice:")
            similarity = vectors.similarity(candidate["text"], item["text"])
            if exclusive or similarity >= config.contradiction_threshold:
                found.append((item, reason))
    found.sort(key=lambda pair: _order(pair[0]))
    return found


def _other_choice(a: MemoryItem, b: MemoryItem) -> bool:
    """Two examples whose answers name different exclusive values ("140 euros" and "150
    dollars") are different examples, however alike their wording: merging them would
    count a vote about one value as a vote about the other."""
    if a["kind"] not in EXAMPLE_KINDS:
        return False
    return exclusive_values(a.get("response") or "") != exclusive_values(b.get("response") or "")


def _outdated_by_ratings(live: list[MemoryItem]) -> list[tuple[MemoryItem, str]]:
    """Rules whose exclusive choice the group's own ratings now reject.

    A preference can change without anyone saying so: the people who asked for euros
    start rating answers in euros down and answers in Swiss francs up. A rule picking a
    value (a currency, a language, a package manager) is retired when, since its last
    support, at least ``MIN_RATED_AGAINST`` poorly received answers used its value and
    ``MIN_RATED_FOR_OTHER`` well received ones used another value of the same kind and not
    its own. Nothing replaces it (ratings name no instruction); a new explanation will.
    """
    examples = [i for i in live if i["kind"] in EXAMPLE_KINDS and i.get("response")]
    out: list[tuple[MemoryItem, str]] = []
    for item in live:
        if item["kind"] != "rule" or item["provenance"].get("derived_by") == "manual":
            continue
        for name, chosen in rule_shape(item["text"]).choices:
            if name not in NAMED_CHOICES:
                continue
            newer = [e for e in examples if e["last_support_ms"] > item["last_support_ms"]]
            against = for_other = 0
            for example in newer:
                values = exclusive_values(example.get("response") or "").get(name, frozenset())
                if example["kind"] == "avoided_example" and values & chosen:
                    against += example["support"]
                elif example["kind"] == "preferred_example" and values and not values & chosen:
                    for_other += example["support"]
            if against >= MIN_RATED_AGAINST and for_other >= MIN_RATED_FOR_OTHER:
                note = (
                    f"retired: since its last support, {against} rated-down answer(s) used "
                    f"{'/'.join(sorted(chosen))} and {for_other} rated-up answer(s) another {name}"
                )
                out.append((item, note))
                break
    return out


def statements_of(evidence: Sequence[dict[str, Any]]) -> list[Statement]:
    """The explanations in a trigger's evidence, as :class:`Statement` values."""
    out: list[Statement] = []
    for item in evidence:
        text = (item.get("payload") or {}).get("text")
        if item.get("type") == "explanation" and isinstance(text, str) and item.get("user_id"):
            out.append(
                {
                    "user_id": str(item["user_id"]),
                    "text": text,
                    "timestamp": int(item.get("timestamp") or 0),
                }
            )
    return out


def _withdrawn(
    live: list[MemoryItem], statements: Sequence[Statement], min_users: int
) -> list[tuple[MemoryItem, str]]:
    """Rules left without the support their scope needs after supporters changed their mind.

    A rule choosing an exclusive value ("Answer in French.") stands on the people behind
    it. When one of them later asks for another value of the same choice ("answer in
    Spanish not French"), that person no longer supports it; if fewer than the scope's
    ``min_users`` remain, the rule is retired even though the new value has too little
    support to replace it yet (a team rule made by three people must not outlive two of
    them asking for something else). Nothing replaces it until the new value has support.
    """
    out: list[tuple[MemoryItem, str]] = []
    for item in live:
        if item["kind"] != "rule" or item["provenance"].get("derived_by") == "manual":
            continue
        choices = [(n, c) for n, c in rule_shape(item["text"]).choices if n in NAMED_CHOICES]
        if not choices:
            continue
        supporters = set(item["provenance"]["user_ids"])
        reversed_by: dict[str, str] = {}
        for said in statements:
            if said["user_id"] not in supporters or said["timestamp"] <= item["last_support_ms"]:
                continue
            wanted = dict(rule_shape(said["text"]).choices)
            for name, chosen in choices:
                other = wanted.get(name, frozenset())
                if other and not other & chosen:
                    reversed_by[said["user_id"]] = "/".join(sorted(other))
        if not reversed_by:
            continue
        left = len(supporters - set(reversed_by))
        if left < min_users:
            who = ", ".join(f"{u} now asks for {v}" for u, v in sorted(reversed_by.items()))
            note = (
                f"retired: support withdrawn ({who}); {left} supporter(s) left, "
                f"the scope needs {min_users}"
            )
            out.append((item, note))
    return out


def recovered_tools(
    stats: Mapping[str, Any] | None, min_calls: int, failure_rate: float
) -> dict[str, tuple[int, int]]:
    """Tools called at least ``min_calls`` times whose failure rate is now under the line.

    ``stats`` is a trigger's group statistics; the answer maps each such tool to its
    ``(calls, failures)``.
    """
    out: dict[str, tuple[int, int]] = {}
    for name, entry in ((stats or {}).get("tools") or {}).items():
        calls, failures = int(entry.get("calls") or 0), int(entry.get("failures") or 0)
        if calls >= min_calls and failures / calls < failure_rate:
            out[name] = (calls, failures)
    return out


def _recovered(
    live: list[MemoryItem], tools: Mapping[str, tuple[int, int]]
) -> list[tuple[MemoryItem, str]]:
    """Tool rules about tools that work again: their advice ("avoid it") is now wrong."""
    if not tools or not live:
        return []
    group = live[0]["group"]
    by_id = {item_id(group, "tool_rule", f"tool:{name}"): name for name in tools}
    out: list[tuple[MemoryItem, str]] = []
    for item in live:
        name = by_id.get(item["item_id"])
        if name is None or item["provenance"].get("derived_by") == "manual":
            continue
        calls, failures = tools[name]
        note = (
            f"retired: the `{name}` tool now fails in {failures} of {calls} calls, "
            "under the scope's threshold"
        )
        out.append((item, note))
    return out


def live_choices(items: Sequence[MemoryItem]) -> list[dict[str, Any]]:
    """The exclusive choices the live rules make that :func:`_outdated_by_ratings` can
    check, for the aggregation stage: ratings against one of them re-synthesise sooner."""
    out: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}
    for item in items:
        if item["kind"] != "rule" or item["status"] not in LIVE:
            continue
        if item["provenance"].get("derived_by") == "manual":
            continue
        for name, chosen in rule_shape(item["text"]).choices:
            if name in NAMED_CHOICES:
                out[(name, chosen)] = {
                    "kind": name,
                    "chosen": sorted(chosen),
                    "values": sorted(choice_values(name)),
                }
    return [out[key] for key in sorted(out, key=lambda k: (k[0], sorted(k[1])))]


def _revive(candidate: MemoryItem, old: MemoryItem) -> None:
    """A retired or superseded item got new support: the candidate continues its history."""
    candidate["created_ms"] = old["created_ms"]
    prov, before = candidate["provenance"], old["provenance"]
    events = [e for e in before["event_ids"] if e not in prov["event_ids"]] + prov["event_ids"]
    prov["event_ids"] = events[-MAX_EVENT_IDS:]
    users = sorted(set(prov["user_ids"]) | set(before["user_ids"]))
    prov["user_ids"] = users[:MAX_USER_IDS]
    prov["distinct_users"] = max(len(users), prov["distinct_users"], before["distinct_users"])
    candidate["note"] = f"revived after being {old['status']}"


def _admit(
    candidate: MemoryItem,
    live: list[MemoryItem],
    history: list[MemoryItem],
    previous: MemoryItem | None,
) -> None:
    if previous is not None:
        history.remove(previous)  # the revived item replaces its retired/superseded self
    live.append(candidate)


def decay_items(
    current: list[MemoryItem], now_ms: int, config: ConsolidationConfig
) -> tuple[list[MemoryItem], list[Change]]:
    """A decay pass: consolidation with no candidates, so no embedder is needed."""
    return consolidate(current, [], now_ms, config, _NO_EMBEDDER)


class _NoEmbedder:
    """Stands in where nothing may be embedded; using it is a bug."""

    dim = 0
    name = "none"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if texts:
            raise RuntimeError("a decay pass must not embed anything")
        return []


_NO_EMBEDDER: Final = _NoEmbedder()


def consolidate(
    current: list[MemoryItem],
    candidates: list[MemoryItem],
    now_ms: int,
    config: ConsolidationConfig,
    embedder: Embedder,
    statements: Sequence[Statement] = (),
    min_users: int = 1,
    recovered: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[MemoryItem], list[Change]]:
    """The group's new item list (live first, deterministic order) and what changed.

    ``statements`` are the explanations in the evidence behind ``candidates``; a rule whose
    supporters ask for another value of its choice loses their support (``min_users`` is
    the group's scope policy), see :func:`_withdrawn`. Tool rules about ``recovered``
    tools (:func:`recovered_tools` of the trigger's statistics) are retired.
    """
    groups = {i["group"] for i in current} | {i["group"] for i in candidates}
    if len(groups) > 1:
        raise ValueError(f"consolidate works on one group at a time, got {sorted(groups)}")
    changes: list[Change] = []
    items = [copy.deepcopy(i) for i in current]
    live = [i for i in items if i["status"] in LIVE]
    history = [i for i in items if i["status"] not in LIVE]
    for item in sorted(live, key=lambda i: i["item_id"]):
        change = _decay(item, now_ms, config)
        if change is not None:
            changes.append(change)
    history += [i for i in live if i["status"] not in LIVE]
    live = [i for i in live if i["status"] in LIVE]

    fresh = sorted(
        (copy.deepcopy(c) for c in candidates),
        key=lambda c: (KIND_ORDER.get(c["kind"], 99), c["item_id"]),
    )
    # nothing is embedded on a decay pass (no candidates): the timer's passes stay cheap
    texts = [i["text"] for i in live] + [c["text"] for c in fresh] if fresh else []
    vectors = _Vectors(embedder, texts)
    added: set[str] = set()
    for candidate in fresh:
        candidate["strength"] = min(candidate["strength"], config.max_strength)
        by_id = {i["item_id"]: i for i in live}
        same = by_id.get(candidate["item_id"])
        if same is not None:
            change = _merge(same, candidate, now_ms, "same id", config.max_strength)
            if change is not None:
                changes.append(change)
            continue
        previous = next((h for h in history if h["item_id"] == candidate["item_id"]), None)
        if previous is not None:
            if previous["status"] == "rejected":
                continue  # a person rejected this exact item; new evidence does not overrule that
            _revive(candidate, previous)
        overruled = _contradicted(candidate, live, vectors, config)
        if overruled:
            for old, reason in overruled:
                changes.append(_supersede(old, candidate, reason, now_ms))
                live.remove(old)
                history.append(old)
            _admit(candidate, live, history, previous)
            added.add(candidate["item_id"])
            ids = ", ".join(old["item_id"] for old, _ in overruled)
            changes.append(
                {"item_id": candidate["item_id"], "action": "added", "detail": f"supersedes {ids}"}
            )
            continue
        best: tuple[float, str, MemoryItem] | None = None
        for item in live:
            if item["kind"] != candidate["kind"] or _other_choice(candidate, item):
                continue
            similarity = vectors.similarity(candidate["text"], item["text"])
            if similarity >= config.merge_threshold and (
                best is None or (similarity, item["item_id"]) > (best[0], best[1])
            ):
                best = (similarity, item["item_id"], item)
        if best is not None:
            change = _merge(
                best[2], candidate, now_ms, f"cosine {best[0]:.2f}", config.max_strength
            )
            if change is not None:
                changes.append(change)
            continue
        _admit(candidate, live, history, previous)
        added.add(candidate["item_id"])
        detail = candidate.get("note") or f"new {candidate['kind']}: {_short(candidate['text'])}"
        changes.append({"item_id": candidate["item_id"], "action": "added", "detail": detail})

    retiring = _outdated_by_ratings(live)
    retiring += [
        (item, note)
        for item, note in _withdrawn(live, statements, min_users)
        + _recovered(live, recovered or {})
        if all(item is not other for other, _ in retiring)
    ]
    for item, note in retiring:
        item["status"] = "retired"
        item["updated_ms"] = now_ms
        item["note"] = note
        live.remove(item)
        history.append(item)
        added.discard(item["item_id"])
        changes.append({"item_id": item["item_id"], "action": "retired", "detail": note})

    # caps: the weakest (then least recently supported, then oldest) go first
    tokens = sum(i["tokens"] for i in live)
    while live and (len(live) > config.max_items or tokens > config.token_budget):
        weakest = min(
            live, key=lambda i: (i["strength"], i["last_support_ms"], i["created_ms"], i["item_id"])
        )
        live.remove(weakest)
        tokens -= weakest["tokens"]
        if weakest["item_id"] in added:
            changes = [
                c
                for c in changes
                if not (c["item_id"] == weakest["item_id"] and c["action"] == "added")
            ]
            detail = f"not admitted: weakest candidate (strength {weakest['strength']:.3f})"
        else:
            detail = f"evicted as weakest (strength {weakest['strength']:.3f}) to stay within caps"
        changes.append({"item_id": weakest["item_id"], "action": "evicted", "detail": detail})

    history.sort(key=lambda i: (-i["updated_ms"], i["item_id"]))
    for dropped in history[config.max_history :]:
        changes.append(
            {"item_id": dropped["item_id"], "action": "evicted", "detail": "history cap reached"}
        )
    history = history[: config.max_history]
    return sorted(live, key=_order) + sorted(history, key=_order), changes
