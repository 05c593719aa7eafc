"""The offline synthesizer: honest heuristics, no LLM, no network; what new users see first.

From one trigger's evidence it proposes:

- ``rule``: explanations clustered by embedding similarity; a cluster becomes a rule
  only with enough distinct users and capped support (the scope's policy), worded
  as the cluster's most central explanation with the conversational frame removed;
- ``correction`` (and, for a clear substitution, a ``rule``): from each edit's diff;
- ``preferred_example`` / ``avoided_example``: from ratings, and from implicit signals
  (engagement and the LLM judge's derived ratings: weighted 0.3 of a person's rating,
  believed only with 3 or more signals on one response; ``processors/ratings.py``);
- ``tool_rule``: from tools whose failure rate is over the policy's threshold.

Every text is redacted first and checked for injection; feedback is data, never an
instruction to this system. Ids are deterministic so a replayed trigger proposes the
same items.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Any, Final

from processors.aggregate import Trigger
from processors.embedding import (
    GENERIC,
    Embedder,
    content_tokens,
    cosine_matrix,
    normalise,
)
from processors.memory import ItemKind, MemoryItem
from processors.policy import ScopePolicy
from processors.ratings import (
    IMPLICIT_WEIGHT,
    MIN_IMPLICIT_SIGNALS,
    is_derived,
    is_implicit,
    polarity,
)
from processors.redact import redactor
from processors.synthesis.base import (
    KIND_ORDER,
    MAX_EVENT_IDS,
    MAX_USER_IDS,
    SynthesisResult,
    last_support_ms,
    new_item,
    provenance,
    skip,
)
from processors.synthesis.diff import describe_edit
from processors.synthesis.guard import injection_reason
from processors.synthesis.text import (
    FRAME_WORDS,
    contradiction,
    is_chatter,
    rule_key,
    to_imperative,
)

ENGAGEMENT_WEIGHT: Final = IMPLICIT_WEIGHT
LIVE_STATUSES: Final = frozenset({"active", "proposed"})
# content words an inserted phrase must share with a rule to count as already covered by it
COVERED_OVERLAP: Final = 2
MIN_ENGAGEMENT_SIGNALS: Final = MIN_IMPLICIT_SIGNALS
_TOOL_NAME_RE: Final = re.compile(r"[^A-Za-z0-9_.:\-]")
_PLACEHOLDER_RE: Final = re.compile(
    r"\[\s*[A-Z_]+\s*\]"
)  # what redaction left: [EMAIL], [REDACTED]

Evidence = dict[str, Any]


def _digest(*parts: str) -> str:
    joined = "\x1f".join(" ".join(normalise(p).split()) for p in parts)
    return blake2b(joined.encode("utf-8"), digest_size=12).hexdigest()


def _short(text: str, limit: int = 12) -> str:
    words = " ".join(text.split()).split(" ")
    return " ".join(words[:limit]) + ("\u2026" if len(words) > limit else "")


def capped_support(evidence: Sequence[Evidence], policy: ScopePolicy) -> tuple[float, int]:
    """Support with each user's count capped at ceil(min_evidence * max_user_weight)."""
    per_user = Counter(str(e.get("user_id", "")) for e in evidence)
    cap = max(1, math.ceil(policy.min_evidence * policy.max_user_weight))
    return float(sum(min(n, cap) for n in per_user.values())), len(per_user)


def example_too_narrow(evidence: Sequence[Evidence], policy: ScopePolicy) -> str | None:
    """Why a rated example may not enter this group, or None if enough users agree.

    An example in a group is shown to all its members, so it needs as many distinct
    users behind it as a rule there: one user's up-voted answer (an odd taste, say)
    stays in that user's own group and out of the team's and the org's.
    """
    users = len({str(e.get("user_id", "")) for e in evidence})
    if users >= policy.min_users:
        return None
    return f"{users} user(s) agree; an example in this scope needs {policy.min_users}"


class OfflineSynthesizer:
    """Deterministic synthesis from evidence; see the module docstring for what it derives."""

    def __init__(
        self,
        embedder: Embedder,
        policy_for_scope: Callable[[str], ScopePolicy],
        cluster_threshold: float = 0.35,
        redact_patterns: Sequence[str] = (),
    ) -> None:
        self.name = "offline"
        self.prompt_version: str | None = None
        self.embedder = embedder
        self.policy_for_scope = policy_for_scope
        self.cluster_threshold = cluster_threshold
        self._redact = redactor(tuple(redact_patterns))

    # -- entry point ---------------------------------------------------------------

    def synthesize(
        self, trigger: Trigger, current: Sequence[MemoryItem], now_ms: int
    ) -> SynthesisResult:
        """Candidate items for ``trigger`` and the evidence left out, with reasons."""
        policy = self.policy_for_scope(trigger["scope"])
        skipped: list[dict[str, Any]] = []
        by_type: dict[str, list[Evidence]] = {}
        seen: set[str] = set()
        ordered = sorted(
            trigger["evidence"],
            key=lambda e: (int(e.get("timestamp") or 0), str(e.get("event_id", ""))),
        )
        for raw in ordered:
            event_id = str(raw.get("event_id", ""))
            if not event_id or event_id in seen:
                continue  # at-least-once delivery: the same event twice counts once
            seen.add(event_id)
            evidence = self._redacted(raw)
            by_type.setdefault(str(evidence.get("type", "")), []).append(evidence)
        items: list[MemoryItem] = []
        explanations = by_type.pop("explanation", [])
        edits = by_type.pop("edit", [])
        items += self._explanations(trigger, policy, explanations, edits, now_ms, skipped)
        covered = [i["text"] for i in items if i["kind"] == "rule"]
        covered += [
            i["text"] for i in current if i["kind"] == "rule" and i["status"] in LIVE_STATUSES
        ]
        items += self._edits(trigger, policy, edits, now_ms, skipped, covered)
        feedback = by_type.pop("rating", []) + by_type.pop("engagement", [])
        items += self._examples(trigger, policy, feedback, now_ms, skipped)
        tool_evidence = by_type.pop("interaction", []) + by_type.pop("tool_call", [])
        items += self._tool_rules(trigger, policy, tool_evidence, now_ms, skipped)
        for kind, rest in sorted(by_type.items()):
            skipped += [skip(e, "unsupported_type", kind) for e in rest]
        items = self._without_rejected(_merge_same_ids(items), current, skipped)
        items.sort(key=lambda i: (KIND_ORDER[i["kind"]], i["item_id"]))
        return {"items": items, "skipped": skipped}

    # -- preparation ---------------------------------------------------------------

    def _redacted(self, evidence: Evidence) -> Evidence:
        """A copy with every free-text field redacted: nothing below sees raw PII."""
        out = dict(evidence)
        for field in ("query", "response"):
            if isinstance(out.get(field), str):
                out[field] = self._redact(out[field])
        payload = dict(out.get("payload") or {})
        for field in ("text", "original", "edited", "query", "response", "error", "arguments"):
            if isinstance(payload.get(field), str):
                payload[field] = self._redact(payload[field])
        if isinstance(payload.get("tool_calls"), list):
            calls = []
            for call in payload["tool_calls"]:
                call = dict(call) if isinstance(call, dict) else {}
                for field in ("error", "arguments"):
                    if isinstance(call.get(field), str):
                        call[field] = self._redact(call[field])
                calls.append(call)
            payload["tool_calls"] = calls
        out["payload"] = payload
        out["flags"] = list(out.get("flags") or [])
        return out

    def _without_rejected(
        self, items: list[MemoryItem], current: Sequence[MemoryItem], skipped: list[dict[str, Any]]
    ) -> list[MemoryItem]:
        """A person rejected these ids before; proposing them again would undo that."""
        rejected = {i["item_id"] for i in current if i["status"] == "rejected"}
        kept = []
        for item in items:
            if item["item_id"] in rejected:
                skipped += [
                    {
                        "event_id": e,
                        "type": item["kind"],
                        "reason": "previously_rejected",
                        "detail": item["item_id"],
                    }
                    for e in item["provenance"]["event_ids"]
                ]
            else:
                kept.append(item)
        return kept

    # -- explanations -> rules -----------------------------------------------------

    def _explanations(
        self,
        trigger: Trigger,
        policy: ScopePolicy,
        evidence: list[Evidence],
        edits: list[Evidence],
        now_ms: int,
        skipped: list[dict[str, Any]],
    ) -> list[MemoryItem]:
        """Rules from clusters of explanations.

        An edit's diff ("Add 'a local experiences tour'") joins the clustering as support
        from its user: the people who fixed an answer by hand hold the preference as much
        as those who explained it. A cluster needs at least one explanation to become a
        rule (an edit's wording is no instruction), and its text is an explanation's.
        """
        entries: list[tuple[Evidence, str]] = []
        for ev in evidence:
            text = str(ev["payload"].get("text") or "")
            if not text.strip():
                skipped.append(skip(ev, "empty"))
                continue
            reason = injection_reason(text)
            if reason is not None:
                skipped.append(skip(ev, "possible_injection", reason))
                continue
            rule = to_imperative(text)
            if not rule:
                detail = (
                    "a reaction (thanks, sentiment, hedging), not an instruction"
                    if is_chatter(text)
                    else "no instruction in the explanation"
                )
                skipped.append(skip(ev, "not_actionable", detail))
                continue
            entries.append((ev, rule))
        if not entries:
            return []
        explained = len(entries)
        entries += _edit_entries(edits)
        rules = [rule for _, rule in entries]
        vectors = self.embedder.embed(rules)
        sims = cosine_matrix(vectors)

        def short_of_policy(members: list[int]) -> bool:
            support, users = capped_support([entries[i][0] for i in members], policy)
            return users < policy.min_users or support < policy.min_evidence

        proposals: list[tuple[MemoryItem, list[Evidence]]] = []
        clusters = join_by_anchor(
            cluster(sims, rules, self.cluster_threshold),
            sims,
            rules,
            self.cluster_threshold,
            short_of_policy,
        )
        for members in clusters:
            spoken = [i for i in members if i < explained]
            if not spoken:
                continue  # edits only: their corrections and substitutions come from _edits
            group = [entries[i][0] for i in members]
            support, users = capped_support(group, policy)
            if users < policy.min_users or support < policy.min_evidence:
                detail = (
                    f"{users} user(s), support {support:g}; the {trigger['scope']} scope needs "
                    f"{policy.min_users} user(s) and support {policy.min_evidence}"
                )
                skipped += [skip(entries[i][0], "insufficient_support", detail) for i in spoken]
                continue
            text = rules[_most_central(spoken, sims, rules)]
            item = self._item(
                trigger,
                "rule",
                rule_key(text),
                text,
                group,
                derived_by="explanation_cluster",
                strength=support,
                support=int(support),
                now_ms=now_ms,
            )
            proposals.append((item, group))
        return _strongest_of_contradictions(proposals, skipped)

    # -- edits -> corrections (and substitution rules) -----------------------------

    def _edits(
        self,
        trigger: Trigger,
        policy: ScopePolicy,
        evidence: list[Evidence],
        now_ms: int,
        skipped: list[dict[str, Any]],
        covered: Sequence[str] = (),
    ) -> list[MemoryItem]:
        corrections: dict[str, list[Evidence]] = {}
        insertions: dict[str, list[Evidence]] = {}
        inserted: dict[str, str] = {}
        details: dict[str, tuple[str, str, str, str | None]] = {}
        substitutions: dict[tuple[str, str], list[Evidence]] = {}
        wording: dict[tuple[str, str], tuple[str, str]] = {}
        for ev in evidence:
            original = ev["payload"].get("original")
            edited = ev["payload"].get("edited")
            if not isinstance(original, str) or not isinstance(edited, str):
                skipped.append(skip(ev, "malformed", "edit needs original and edited text"))
                continue
            if " ".join(original.split()) == " ".join(edited.split()):
                skipped.append(skip(ev, "no_change"))
                continue
            reason = injection_reason(edited)
            if reason is not None:
                skipped.append(skip(ev, "possible_injection", reason))
                continue
            diff = describe_edit(original, edited)
            key = _digest(original, edited)
            corrections.setdefault(key, []).append(ev)
            query = ev.get("query") if isinstance(ev.get("query"), str) else None
            details.setdefault(key, (diff.explanation, original, edited, query))
            if diff.substitution is not None:
                old, new = diff.substitution
                sub_key = (old.lower(), new.lower())
                substitutions.setdefault(sub_key, []).append(ev)
                wording.setdefault(sub_key, (old, new))
            elif diff.insertion is not None and _general_phrase(diff.insertion):
                insertions.setdefault(diff.insertion.lower(), []).append(ev)
                inserted.setdefault(diff.insertion.lower(), diff.insertion)
        items: list[MemoryItem] = []
        for key, group in corrections.items():
            explanation, original, edited, query = details[key]
            support, _ = capped_support(group, policy)
            item = self._item(
                trigger,
                "correction",
                key,
                explanation,
                group,
                derived_by="edit_diff",
                strength=support,
                support=len(group),
                now_ms=now_ms,
            )
            item["query"] = query
            item["response"] = original
            item["corrected"] = edited
            items.append(item)
        for sub_key, group in sorted(substitutions.items()):
            support, users = capped_support(group, policy)
            if users < policy.min_users or support < policy.min_evidence:
                detail = f"substitution rule needs {policy.min_users} user(s); has {users}"
                skipped += [skip(ev, "substitution_below_policy", detail) for ev in group]
                continue
            old, new = wording[sub_key]
            text = f"Use '{new}' instead of '{old}'."
            items.append(
                self._item(
                    trigger,
                    "rule",
                    f"substitution:{sub_key[0]}>{sub_key[1]}",
                    text,
                    group,
                    derived_by="edit_diff",
                    strength=support,
                    support=int(support),
                    now_ms=now_ms,
                )
            )
        for phrase_key, group in sorted(insertions.items()):
            support, users = capped_support(group, policy)
            if users < policy.min_users or support < policy.min_evidence:
                detail = f"insertion rule needs {policy.min_users} user(s); has {users}"
                skipped += [skip(ev, "insertion_below_policy", detail) for ev in group]
                continue
            phrase = inserted[phrase_key]
            words = set(content_tokens(phrase)) - GENERIC
            rival = next(
                (t for t in covered if len(words & set(content_tokens(t))) >= COVERED_OVERLAP),
                None,
            )
            if rival is not None:
                detail = f"already covered by the rule '{_short(rival)}'"
                skipped += [skip(ev, "insertion_covered", detail) for ev in group]
                continue
            text = f"Include {phrase}."
            items.append(
                self._item(
                    trigger,
                    "rule",
                    f"insertion:{phrase_key}",
                    text,
                    group,
                    derived_by="edit_diff",
                    strength=support,
                    support=int(support),
                    now_ms=now_ms,
                )
            )
        return items

    def _item(
        self,
        trigger: Trigger,
        kind: ItemKind,
        key: str,
        text: str,
        evidence: list[Evidence],
        *,
        derived_by: str,
        strength: float,
        support: int,
        now_ms: int,
    ) -> MemoryItem:
        """A candidate item with this synthesizer's provenance over ``evidence``."""
        return new_item(
            trigger,
            kind,
            key,
            text,
            strength=strength,
            support=support,
            now_ms=now_ms,
            prov=provenance(
                evidence,
                synthesizer=self.name,
                prompt_version=self.prompt_version,
                derived_by=derived_by,
                trigger=trigger,
            ),
            supported_ms=last_support_ms(evidence, now_ms),
        )

    # -- ratings and engagement -> examples ----------------------------------------

    def _examples(
        self,
        trigger: Trigger,
        policy: ScopePolicy,
        evidence: list[Evidence],
        now_ms: int,
        skipped: list[dict[str, Any]],
    ) -> list[MemoryItem]:
        votes: dict[str, list[tuple[Evidence, int, bool]]] = {}
        texts: dict[str, tuple[str, str]] = {}
        for ev in evidence:
            polarity = _polarity(ev)
            if isinstance(polarity, str):
                skipped.append(skip(ev, polarity))
                continue
            query, response = ev.get("query"), ev.get("response")
            if not isinstance(response, str) or not response.strip():
                skipped.append(skip(ev, "no_response", "feedback not joined to an interaction"))
                continue
            query = query if isinstance(query, str) else ""
            reason = injection_reason(query) or injection_reason(response)
            if reason is not None:
                skipped.append(skip(ev, "possible_injection", reason))
                continue
            key = _digest(query, response)
            votes.setdefault(key, []).append((ev, polarity, not is_implicit(ev)))
            texts.setdefault(key, (query, response))
        items: list[MemoryItem] = []
        for key, group in votes.items():
            implicit = [v for v in group if not v[2]]
            believed = len(implicit) >= MIN_ENGAGEMENT_SIGNALS
            if not believed:
                detail = f"{len(implicit)} implicit signal(s); needs {MIN_ENGAGEMENT_SIGNALS}"
                skipped += [skip(ev, "engagement_not_aggregated", detail) for ev, _, _ in implicit]
            counted = [v for v in group if v[2] or believed]
            score = sum(p * (1.0 if explicit else ENGAGEMENT_WEIGHT) for _, p, explicit in counted)
            if abs(score) < 1e-9:
                skipped += [skip(ev, "conflicting_signals") for ev, _, _ in counted]
                continue
            sign = 1 if score > 0 else -1
            agreeing = [v for v in counted if v[1] == sign]
            skipped += [skip(ev, "outvoted") for ev, p, _ in counted if p != sign]
            narrow = example_too_narrow([ev for ev, _, _ in agreeing], policy)
            if narrow is not None:
                skipped += [skip(ev, "insufficient_support", narrow) for ev, _, _ in agreeing]
                continue
            query, response = texts[key]
            kind: ItemKind = "preferred_example" if sign > 0 else "avoided_example"
            label = "Well received" if sign > 0 else "Poorly received"
            about = f" to '{_short(query)}'" if query else ""
            text = f"{label} answer{about}: '{_short(response)}'"
            evs = [ev for ev, _, _ in agreeing]
            if any(explicit for _, _, explicit in agreeing):
                derived = "rating"
            elif any(is_derived(ev.get("payload")) for ev, _, _ in agreeing):
                derived = "llm_judge"
            else:
                derived = "engagement"
            item = self._item(
                trigger,
                kind,
                key,
                text,
                evs,
                derived_by=derived,
                strength=abs(score),
                support=len(agreeing),
                now_ms=now_ms,
            )
            item["query"] = query or None
            item["response"] = response
            items.append(item)
        return items

    # -- tool failures -> tool rules -----------------------------------------------

    def _tool_rules(
        self,
        trigger: Trigger,
        policy: ScopePolicy,
        evidence: list[Evidence],
        now_ms: int,
        skipped: list[dict[str, Any]],
    ) -> list[MemoryItem]:
        failed: dict[str, list[tuple[Evidence, dict[str, Any]]]] = {}
        seen_calls: Counter[str] = Counter()
        for ev in evidence:
            payload = ev["payload"]
            calls = payload.get("tool_calls") if ev.get("type") == "interaction" else [payload]
            for call in calls or []:
                if not isinstance(call, dict):
                    continue
                name = _TOOL_NAME_RE.sub("", str(call.get("name") or ""))[:64]
                if not name:
                    continue
                seen_calls[name] += 1
                if call.get("status") != "ok":
                    failed.setdefault(name, []).append((ev, call))
        stats = trigger["stats"] or {}
        tool_stats: dict[str, Any] = stats.get("tools") or {}
        used: set[str] = set()
        items: list[MemoryItem] = []
        for name in sorted(failed):
            entry = tool_stats.get(name) or {}
            calls = int(entry.get("calls") or seen_calls[name])
            failures = int(entry.get("failures") or len(failed[name]))
            group = [ev for ev, _ in failed[name]]
            users = len({str(ev.get("user_id", "")) for ev in group})
            if (
                calls < policy.min_tool_calls
                or failures / max(calls, 1) < policy.tool_failure_rate
                or users < policy.min_users
            ):
                continue
            used |= {str(ev["event_id"]) for ev in group}
            text = _tool_rule_text(name, calls, failures, failed[name])
            unique = list({str(ev["event_id"]): ev for ev in group}.values())
            items.append(
                self._item(
                    trigger,
                    "tool_rule",
                    f"tool:{name}",
                    text,
                    unique,
                    derived_by="tool_failure_pattern",
                    strength=float(users),
                    support=failures,
                    now_ms=now_ms,
                )
            )
        for ev in evidence:
            if str(ev["event_id"]) not in used:
                skipped.append(skip(ev, "tool_failures_below_policy"))
        return items


def _general_phrase(phrase: str) -> bool:
    """An inserted phrase that can be a rule: it names something (a content word beyond the
    generic ones), is no reaction, and holds no digits or redacted values, which tie it to
    one answer (a ticket number, a price, a date, an address)."""
    if any(ch.isdigit() for ch in phrase) or _PLACEHOLDER_RE.search(phrase) or is_chatter(phrase):
        return False
    return bool(set(content_tokens(phrase)) - GENERIC)


def _strongest_of_contradictions(
    proposals: list[tuple[MemoryItem, list[Evidence]]], skipped: list[dict[str, Any]]
) -> list[MemoryItem]:
    """When one trigger holds both "use tabs" and "don't use tabs", keep the better supported
    (then the more recently supported) rule; the other's evidence is skipped, not lost."""
    ranked = sorted(
        proposals,
        key=lambda p: (-p[0]["strength"], -p[0]["last_support_ms"], p[0]["item_id"]),
    )
    kept: list[MemoryItem] = []
    for item, group in ranked:
        rival = next((k for k in kept if contradiction(item["text"], k["text"])), None)
        if rival is None:
            kept.append(item)
        else:
            skipped += [
                skip(ev, "contradicted", f"outweighed by {rival['item_id']}") for ev in group
            ]
    return kept


def _polarity(ev: Evidence) -> int | str:
    """+1 for, -1 against, or the reason a rating or engagement says neither."""
    kind = "rating" if ev.get("type") == "rating" else "engagement"
    return polarity(kind, ev.get("payload"))


def _tool_rule_text(
    name: str, calls: int, failures: int, failed: list[tuple[Evidence, dict[str, Any]]]
) -> str:
    errors: Counter[str] = Counter()
    for _, call in failed:
        error = " ".join(str(call.get("error") or "").split()).strip("`'\"")
        if error and injection_reason(error) is None:
            errors[error[:80]] += 1
    statuses = Counter(str(call.get("status")) for _, call in failed)
    flags = Counter(flag for ev, _ in failed for flag in ev.get("flags") or [])
    common = errors.most_common(1)[0][0] if errors else ""
    detail = f" (mostly: {common})" if common else ""
    if flags["nonsense_arguments"] > len(failed) // 2:
        advice = "check that its arguments are complete and well-formed before calling it"
    elif statuses["timeout"] > len(failed) // 2:
        advice = "expect timeouts: call it once and report the failure instead of retrying"
    elif flags["retry_loop"] > len(failed) // 2:
        advice = "after a failure, change the arguments instead of repeating the same call"
    else:
        advice = "check its arguments before calling it"
    return f"The `{name}` tool failed in {failures} of {calls} calls{detail}; {advice}."


def _most_central(members: list[int], sims: list[list[float]], texts: list[str]) -> int:
    """The member most similar to the rest (then the shortest, then the earliest)."""
    if len(members) == 1:
        return members[0]

    def rank(i: int) -> tuple[float, int, int]:
        mean = sum(sims[i][j] for j in members if j != i) / (len(members) - 1)
        return (-round(mean, 9), len(texts[i].split()), i)

    return min(members, key=rank)


def cluster(sims: list[list[float]], texts: list[str], threshold: float) -> list[list[int]]:
    """Average-linkage agglomerative clustering, deterministic, never joining contradictions.

    Two explanations that contradict each other ("answer in German" / "answer in
    English") score high on bag-of-words similarity; the contradiction check keeps
    them apart.
    """
    n = len(texts)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    link: dict[int, dict[int, float]] = {
        i: {j: sims[i][j] for j in range(n) if j != i} for i in range(n)
    }
    veto: dict[int, set[int]] = {i: set() for i in range(n)}
    for i in range(n):
        for j in range(i + 1, n):
            if sims[i][j] >= threshold / 2 and (
                contradiction(texts[i], texts[j]) or contradiction(texts[j], texts[i])
            ):
                veto[i].add(j)
                veto[j].add(i)
    while True:
        best: tuple[float, int, int] | None = None
        alive = sorted(members)
        for x, a in enumerate(alive):
            for b in alive[x + 1 :]:
                if b in veto[a]:
                    continue
                average = link[a][b] / (len(members[a]) * len(members[b]))
                if average >= threshold and (best is None or average > best[0] + 1e-12):
                    best = (average, a, b)
        if best is None:
            break
        _, a, b = best
        members[a] += members.pop(b)
        for c in members:
            if c != a:
                link[a][c] += link[b][c]
                link[c][a] = link[a][c]
                link[c].pop(b, None)
        link.pop(b)
        link[a].pop(b, None)
        veto[a] |= veto.pop(b)
        for c in veto:
            if b in veto[c]:
                veto[c].discard(b)
                veto[c].add(a)
    return sorted((sorted(m) for m in members.values()), key=lambda m: m[0])


def _edit_entries(edits: list[Evidence]) -> list[tuple[Evidence, str]]:
    """(edit, its diff's explanation) for edits that add, remove or reword some words."""
    out: list[tuple[Evidence, str]] = []
    for ev in edits:
        original, edited = ev["payload"].get("original"), ev["payload"].get("edited")
        if not isinstance(original, str) or not isinstance(edited, str):
            continue
        if injection_reason(edited) is not None:
            continue
        diff = describe_edit(original, edited)
        if diff.changes and diff.explanation.startswith(("Prefer ", "Add ", "Leave out ")):
            out.append((ev, diff.explanation))
    return out


def _anchors(text: str) -> frozenset[str]:
    """The words naming what a rule is about (not its frame: "use", "suggest", "not")."""
    return frozenset(
        t for t in content_tokens(text) if t not in GENERIC and t not in FRAME_WORDS and t != "not"
    )


def join_by_anchor(
    clusters: list[list[int]],
    sims: list[list[float]],
    texts: list[str],
    threshold: float,
    short_of_policy: Callable[[list[int]], bool],
) -> list[list[int]]:
    """Give clusters too small for the policy a second chance: join one to the closest
    cluster whose every member shares a word with every member of it ("Give Terraform code."
    and "Use Terraform instead of clicking in the console."), if on average they are at
    least half as similar as clustering requires and no pair contradicts.

    Bag-of-words similarity undervalues a short paraphrase of a long sentence, so the
    people who said one thing in different lengths end up in clusters that each lack
    support; the shared anchor word is what they all name.
    """
    groups = [list(m) for m in clusters]
    anchors = [_anchors(t) for t in texts]
    while True:
        best: tuple[float, int, int] | None = None
        for x, small in enumerate(groups):
            if not short_of_policy(small):
                continue
            for y, other in enumerate(groups):
                if x == y:
                    continue
                shared = frozenset.intersection(*(anchors[i] for i in small + other))
                if not shared:
                    continue
                average = sum(sims[i][j] for i in small for j in other) / (len(small) * len(other))
                if average < threshold / 2:
                    continue
                if any(
                    contradiction(texts[i], texts[j]) or contradiction(texts[j], texts[i])
                    for i in small
                    for j in other
                ):
                    continue
                if best is None or average > best[0] + 1e-12:
                    best = (average, x, y)
        if best is None:
            break
        _, x, y = best
        groups[x] = sorted(groups[x] + groups[y])
        del groups[y]
    return sorted(groups, key=lambda m: m[0])


def _merge_same_ids(items: list[MemoryItem]) -> list[MemoryItem]:
    """Two paths that derived the same item (same id) make one item with both supports."""
    merged: dict[str, MemoryItem] = {}
    for item in items:
        found = merged.get(item["item_id"])
        if found is None:
            merged[item["item_id"]] = item
            continue
        found["strength"] = round(found["strength"] + item["strength"], 6)
        found["support"] += item["support"]
        found["last_support_ms"] = max(found["last_support_ms"], item["last_support_ms"])
        prov, other = found["provenance"], item["provenance"]
        prov["event_ids"] = list(dict.fromkeys(prov["event_ids"] + other["event_ids"]))[
            -MAX_EVENT_IDS:
        ]
        users = sorted(set(prov["user_ids"]) | set(other["user_ids"]))
        prov["user_ids"] = users[:MAX_USER_IDS]
        prov["distinct_users"] = max(len(users), prov["distinct_users"], other["distinct_users"])
    return list(merged.values())
