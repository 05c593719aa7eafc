"""What a scenario should teach each group, and how learned memory is scored against it.

**Matching.** A learned rule (a live ``rule`` or ``tool_rule`` item: status
``active`` or ``proposed``) *matches* a preference when its lower-cased text
contains every term of at least one of the preference's ``match.any``
alternatives as a whole word or phrase (``npm`` does not match ``pnpm``) and
none of its ``match.exclude`` terms. Nothing else is used: no embedding, no
judgement, so anyone can re-check a verdict by reading the rule.

**Expectations** follow the learning policy the pipeline runs with: a group
should learn a preference when the preference's holders *at the end* of the
stream, among the group's members, sent explanations or edits about it from at
least ``min_users`` distinct users with at least ``min_evidence`` events (each
user's count capped like the policy caps it). A tool rule is expected when the
group's members made ``min_tool_calls`` calls with a failure rate of at least
``tool_failure_rate`` and ``min_users`` of them saw a failure. Scopes that
require approval expect a ``proposed`` item.

**Each live rule is classified**: ``correct`` (matches an expectation of its
group), ``stale`` (matches only a preference its holders have since dropped),
``minority`` (matches only a preference some member holds but too few hold, e.g.
an odd user's, in a team or org group: that is the leak the policy must
prevent), ``foreign`` (matches only preferences no member of the group ever
held: cross-group leakage) or ``unmatched`` (matches nothing: noise turned into
a rule). Precision is ``correct / all``; recall is learned expectations over all
expectations.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from learnloop.simulate.generator import SimEvent
from learnloop.simulate.scenario import Match, Scenario
from processors.policy import LearningPolicy, ScopePolicy

RULE_KINDS = ("rule", "tool_rule")
LIVE = ("active", "proposed")


@lru_cache(maxsize=4096)
def _term(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])" + re.escape(term.lower()) + r"(?![\w-])")


def rule_matches(text: str, match: Match) -> bool:
    """The documented matching rule (module docstring)."""
    lowered = text.lower().replace("\u2019", "'")
    if any(_term(t).search(lowered) for t in match.exclude):
        return False
    return any(all(_term(t).search(lowered) for t in alt) for alt in match.any)


@dataclass(frozen=True, slots=True)
class Target:
    """Something learnable: a preference or a failing tool, with its matching terms."""

    id: str  # preference id, or "tool:<name>"
    match: Match
    odd: bool  # held by exactly one user in the whole scenario


@dataclass(slots=True)
class Expectation:
    group: str
    target: str
    status: str  # "active" or "proposed"
    holders: list[str]
    evidence: int  # explanation/edit events (or failing calls) behind it


@dataclass(slots=True)
class Truth:
    """Everything the scorer needs to know about a scenario and its stream."""

    targets: dict[str, Target]
    members: dict[str, set[str]]  # group -> users
    org_of_user: dict[str, str]
    expectations: list[Expectation]
    held: dict[str, set[str]] = field(default_factory=dict)  # group -> targets any member held
    dropped: dict[str, set[str]] = field(default_factory=dict)  # group -> targets since dropped
    changes: list[dict[str, Any]] = field(default_factory=list)

    def expected(self, group: str) -> list[Expectation]:
        return [e for e in self.expectations if e.group == group]


def _groups_of(user: str, team: str, org: str) -> list[str]:
    return [f"user:{user}", f"team:{team}", f"org:{org}", "global"]


def _supported(per_user: Counter[str], policy: ScopePolicy) -> tuple[float, int]:
    cap = max(1, math.ceil(policy.min_evidence * policy.max_user_weight))
    return float(sum(min(n, cap) for n in per_user.values())), len(per_user)


def build_truth(scenario: Scenario, events: Sequence[SimEvent], policy: LearningPolicy) -> Truth:
    """Expectations per group for the stream ``events`` (see the module docstring)."""
    last = scenario.rounds - 1
    holders_all: Counter[str] = Counter()
    members: dict[str, set[str]] = defaultdict(set)
    org_of_user: dict[str, str] = {}
    final: dict[str, set[str]] = defaultdict(set)  # group -> targets held at the end
    held: dict[str, set[str]] = defaultdict(set)
    changes: list[dict[str, Any]] = []
    for org, team, user in scenario.members():
        org_of_user[user.id] = org.id
        for group in _groups_of(user.id, team.id, org.id):
            members[group].add(user.id)
            held[group] |= {h.id for h in user.prefers}
            held[group] |= {f"tool:{t.name}" for t in team.tools}
            final[group] |= {h.id for h in user.prefers if h.active(last)}
        for pref in {h.id for h in user.prefers}:
            holders_all[pref] += 1
        ended = [h for h in user.prefers if h.until_round is not None]
        for old in ended:
            new = [h.id for h in user.prefers if h.from_round == old.until_round]
            changes.append(
                {"user": user.id, "team": team.id, "org": org.id, "from": old.id, "to": new}
            )
    targets: dict[str, Target] = {
        p.id: Target(p.id, p.match, holders_all[p.id] == 1) for p in scenario.preferences
    }
    for _, team, _ in scenario.members():
        for tool in team.tools:
            targets[f"tool:{tool.name}"] = Target(f"tool:{tool.name}", tool.match, False)

    # evidence sent per (group, target, user), counting only current holders of the preference
    holds_at_end = {
        user.id: {h.id for h in user.prefers if h.active(last)} for _, _, user in scenario.members()
    }
    evidence: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    calls: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    failing_users: dict[tuple[str, str], set[str]] = defaultdict(set)
    for sim in events:
        if sim.noise == "duplicate":
            continue
        kind = sim.event["type"]
        groups = _groups_of(sim.user, sim.team, sim.org)
        if (
            kind in ("explanation", "edit")
            and sim.pref
            and sim.noise is None
            and sim.pref in holds_at_end[sim.user]
        ):
            for group in groups:
                evidence[(group, sim.pref)][sim.user] += 1
        tool_calls = (
            sim.event.get("tool_calls", [])
            if kind == "interaction"
            else [sim.event]
            if kind == "tool_call"
            else []
        )
        for call in tool_calls:
            for group in groups:
                entry = calls[(group, f"tool:{call['name']}")]
                entry[0] += 1
                if call["status"] != "ok":
                    entry[1] += 1
                    failing_users[(group, f"tool:{call['name']}")].add(sim.user)

    expectations: list[Expectation] = []
    for (group, target), per_user in sorted(evidence.items()):
        scope = policy.for_scope(group.split(":", 1)[0])
        support, users = _supported(per_user, scope)
        if target in final[group] and users >= scope.min_users and support >= scope.min_evidence:
            status = "proposed" if scope.requires_approval else "active"
            expectations.append(
                Expectation(group, target, status, sorted(per_user), sum(per_user.values()))
            )
    for (group, target), (n_calls, n_failed) in sorted(calls.items()):
        scope = policy.for_scope(group.split(":", 1)[0])
        failing = failing_users[(group, target)]
        if (
            n_calls >= scope.min_tool_calls
            and n_failed / n_calls >= scope.tool_failure_rate
            and len(failing) >= scope.min_users
        ):
            status = "proposed" if scope.requires_approval else "active"
            expectations.append(Expectation(group, target, status, sorted(failing), n_failed))
    dropped = {g: held[g] - final[g] - {t for t in held[g] if t.startswith("tool:")} for g in held}
    return Truth(targets, dict(members), org_of_user, expectations, dict(held), dropped, changes)


def live_rules(snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [i for i in snapshot.get("items", []) if i["kind"] in RULE_KINDS and i["status"] in LIVE]


def matched_targets(text: str, targets: Iterable[Target]) -> list[str]:
    return [t.id for t in targets if rule_matches(text, t.match)]


def classify(group: str, text: str, truth: Truth) -> tuple[str, list[str]]:
    """``correct``, ``stale``, ``minority``, ``foreign`` or ``unmatched``, and the targets hit."""
    hits = matched_targets(text, truth.targets.values())
    expected = {e.target for e in truth.expected(group)}
    if not hits:
        return "unmatched", hits
    if any(h in expected for h in hits):
        return "correct", hits
    if any(h in truth.dropped.get(group, set()) for h in hits):
        return "stale", hits
    if any(h in truth.held.get(group, set()) for h in hits):
        return "minority", hits
    return "foreign", hits


def scope_of(group: str) -> str:
    return group.split(":", 1)[0] if ":" in group else group
