"""``learnloop bench quality``: does the real pipeline learn what the simulated users want?

A scenario's stream is sent round by round into a fresh ``learnloop up`` (embedded
broker, worker, API). After each round the benchmark waits until the pipeline has
drained, then reads every group's memory and every user's context through the
public API, and records which expected preferences have been learned, how big the
context is, and whether anything reached a group or tenant it should not. The
scoring rules are in :mod:`learnloop.bench.truth`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from learnloop.bench.stack import UpStack
from learnloop.bench.truth import (
    LIVE,
    Truth,
    build_truth,
    classify,
    live_rules,
    matched_targets,
    rule_matches,
    scope_of,
)
from learnloop.settings import Settings
from learnloop.simulate.generator import Generator, SimEvent
from learnloop.simulate.scenario import Scenario
from learnloop.simulate.sink import HttpSink, KafkaSink, Sink

BATCH = 500
Progress = Callable[[str, int, int], None]


def bench_start(scenario: Scenario, now: datetime | None = None) -> datetime:
    """Timestamps end just before now, so time-based decay sees fresh evidence."""
    now = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    return now - timedelta(minutes=scenario.rounds * scenario.round_minutes)


async def _send(sink: Sink, events: Sequence[SimEvent]) -> int:
    sent = 0
    async with sink:
        for start in range(0, len(events), BATCH):
            sent += await sink.send([e.event for e in events[start : start + BATCH]])
    return sent


def _naive_tokens(history: Sequence[SimEvent]) -> int:
    """Tokens of the "append every piece of feedback to the prompt" baseline."""
    chars = 0
    for sim in history:
        event = sim.event
        if event["type"] == "explanation":
            chars += len(event["text"]) + 2
        elif event["type"] == "edit":
            chars += len(event["original"]) + len(event["edited"]) + 8
        elif event["type"] == "rating":
            chars += len(_interaction_text(sim)) + 8
    return max(0, (chars + 3) // 4)


_RESPONSES: dict[str, str] = {}


def _interaction_text(sim: SimEvent) -> str:
    return _RESPONSES.get(str(sim.event.get("interaction_id")), "")


def _user_query(scenario: Scenario, user_prefs: list[str]) -> str:
    if user_prefs:
        return scenario.preference(user_prefs[0]).queries[0]
    return scenario.noise.off_topic_queries[0]


class QualityRun:
    """One benchmark run; :meth:`run` returns the JSON-able report."""

    def __init__(
        self,
        scenario: Scenario,
        settings: Settings,
        workdir: Path,
        *,
        seed: int | None = None,
        sink: str = "kafka",
        config: Path | None = None,
        drain_timeout_s: float = 180.0,
        progress: Progress | None = None,
        closed_loop: bool = False,
    ) -> None:
        self.scenario = scenario
        self.settings = settings
        self.workdir = workdir
        self.seed = scenario.seed if seed is None else seed
        self.sink = sink
        self.config = config
        self.drain_timeout_s = drain_timeout_s
        self.progress = progress or (lambda _d, _i, _n: None)
        self.closed_loop = closed_loop

    # -- orchestration -------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        scenario = self.scenario
        generator = Generator(scenario, self.seed, bench_start(scenario))
        static = build_truth(scenario, [], self.settings.policy)  # members, orgs, targets
        events: list[SimEvent] = []
        live_by_round: list[dict[str, list[str]]] = []
        rounds: list[dict[str, Any]] = []
        context_leaks: list[dict[str, Any]] = []
        cache_breaks = 0
        last_prefix: dict[str, tuple[dict[str, int], str]] = {}
        sent = 0
        started = time.monotonic()
        contexts: dict[str, tuple[set[str], dict[str, Any]]] = {}
        with UpStack(self.workdir, config=self.config) as stack:
            self.progress("pipeline ready", 0, scenario.rounds)
            for round_ in range(scenario.rounds):
                knows = self._knows(contexts, static) if self.closed_loop else None
                batch = generator.round(knows)
                events += batch
                for sim in batch:
                    if sim.event["type"] == "interaction":
                        _RESPONSES[sim.event["interaction_id"]] = sim.event["response"]
                sink: Sink = (
                    KafkaSink(stack.bootstrap, self.settings.topics.events)
                    if self.sink == "kafka"
                    else HttpSink(stack.url)
                )
                sent += asyncio.run(_send(sink, batch))
                drain_s = stack.drained(sent, self.drain_timeout_s)
                live_by_round.append(
                    {
                        g: [r["text"] for r in live_rules(stack.memory(g))]
                        for g in sorted(static.members)
                    }
                )
                contexts = self._contexts(stack, static, round_)
                tokens, prefix_bytes = [], []
                for user, (request_groups, ctx) in contexts.items():
                    tokens.append(ctx["tokens"])
                    prefix_bytes.append(len(ctx["prefix"].encode()))
                    context_leaks += self._context_leaks(user, request_groups, ctx, static, round_)
                    seen = last_prefix.get(user)
                    if seen is not None and seen[0] == ctx["versions"] and seen[1] != ctx["prefix"]:
                        cache_breaks += 1
                    last_prefix[user] = (ctx["versions"], ctx["prefix"])
                naive = [
                    _naive_tokens(
                        [
                            e
                            for e in events
                            if e.noise != "duplicate"
                            and (e.user == user or e.team == _team(static, user))
                        ]
                    )
                    for user in contexts
                ]
                on_topic = [e for e in batch if e.event["type"] == "interaction" and e.pref]
                violated = sum(1 for e in on_topic if e.respected is False)
                rounds.append(
                    {
                        "round": round_,
                        "events_sent": sent,
                        "drain_s": round(drain_s, 2),
                        "violation_rate": round(violated / len(on_topic), 3) if on_topic else None,
                        "context_tokens_mean": round(sum(tokens) / max(1, len(tokens)), 1),
                        "context_tokens_max": max(tokens, default=0),
                        "prefix_bytes_max": max(prefix_bytes, default=0),
                        "naive_tokens_mean": round(sum(naive) / max(1, len(naive)), 1),
                        "naive_tokens_max": max(naive, default=0),
                    }
                )
                self.progress(f"round {round_ + 1}/{scenario.rounds}", round_ + 1, scenario.rounds)
            final = {g["group"]: stack.memory(g["group"]) for g in stack.groups()}
            ready_s = stack.ready_s
        truth = build_truth(scenario, events, self.settings.policy)
        learned_at: dict[tuple[str, str], int] = {}
        for e in truth.expectations:
            target = truth.targets[e.target]
            for round_, live in enumerate(live_by_round):
                if any(rule_matches(text, target.match) for text in live.get(e.group, [])):
                    learned_at[(e.group, e.target)] = round_
                    break
        for row in rounds:
            row["learned"] = sum(1 for at in learned_at.values() if at <= row["round"])
            row["expected"] = len(truth.expectations)
        report = self._report(
            events,
            truth,
            final,
            learned_at,
            rounds,
            context_leaks,
            cache_breaks,
            ready_s,
            time.monotonic() - started,
        )
        report["closed_loop"] = self.closed_loop
        report["dissenters"] = self._dissenters(truth, final, contexts)
        return report

    def _knows(
        self, contexts: dict[str, tuple[set[str], dict[str, Any]]], truth: Truth
    ) -> Callable[[str, str], bool]:
        """The simulated agent follows a rule when its last context had one for the preference."""
        texts = {user: [i["text"] for i in ctx["items"]] for user, (_, ctx) in contexts.items()}

        def knows(user: str, pref: str) -> bool:
            target = truth.targets.get(pref)
            return target is not None and any(
                rule_matches(t, target.match) for t in texts.get(user, [])
            )

        return knows

    def _dissenters(
        self,
        truth: Truth,
        final: dict[str, dict[str, Any]],
        contexts: dict[str, tuple[set[str], dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """Users whose own preference opposes one their team or org learned: whose wins?"""
        out = []
        last = self.scenario.rounds - 1
        for org, team, user in self.scenario.members():
            for holding in user.prefers:
                if not holding.active(last):
                    continue
                mine = truth.targets[holding.id]
                for opposed in self.scenario.preference(holding.id).opposes:
                    theirs = truth.targets[opposed]
                    for group in (f"team:{team.id}", f"org:{org.id}"):
                        wide = {
                            r["item_id"]
                            for r in live_rules(final.get(group, {}))
                            if r["status"] == "active" and rule_matches(r["text"], theirs.match)
                        }
                        if not wide:
                            continue
                        own = {
                            r["item_id"]
                            for r in live_rules(final.get(f"user:{user.id}", {}))
                            if rule_matches(r["text"], mine.match)
                        }
                        items = contexts.get(user.id, (set(), {"items": []}))[1]["items"]
                        shown = {i["item_id"] for i in items}
                        if not own:
                            verdict = f"own preference not learned; gets the {group} rule"
                        elif own & shown and not wide & shown:
                            verdict = f"own rule in context, the {group} rule dropped"
                        elif own & shown:
                            verdict = f"both in context: the {group} rule was not dropped"
                        else:
                            verdict = "own rule missing from context"
                        out.append(
                            {
                                "user": user.id,
                                "holds": holding.id,
                                "opposes": opposed,
                                "group": group,
                                "verdict": verdict,
                                "ok": bool(own & shown) and not wide & shown,
                            }
                        )
        return out

    def _contexts(
        self, stack: UpStack, truth: Truth, round_: int
    ) -> dict[str, tuple[set[str], dict[str, Any]]]:
        out: dict[str, tuple[set[str], dict[str, Any]]] = {}
        for org, team, user in self.scenario.members():
            prefs = [h.id for h in user.prefers if h.active(round_)]
            body = {
                "user_id": user.id,
                "team_id": team.id,
                "org_id": org.id,
                "query": _user_query(self.scenario, prefs),
            }
            allowed = {f"user:{user.id}", f"team:{team.id}", f"org:{org.id}", "global"}
            out[user.id] = (allowed, stack.context(**body))
        return out

    def _context_leaks(
        self,
        user: str,
        allowed: set[str],
        ctx: dict[str, Any],
        truth: Truth,
        round_: int,
    ) -> list[dict[str, Any]]:
        leaks = []
        org = truth.org_of_user[user]
        for item in [*ctx["items"], *ctx["examples"]]:
            group = item["group"]
            if group in allowed:
                continue
            owners = {truth.org_of_user[u] for u in truth.members.get(group, set())}
            leaks.append(
                {
                    "round": round_,
                    "user": user,
                    "group": group,
                    "item_id": item["item_id"],
                    "cross_tenant": bool(owners - {org}),
                }
            )
        return leaks

    # -- scoring ---------------------------------------------------------------------

    def _report(
        self,
        events: list[SimEvent],
        truth: Truth,
        final: dict[str, dict[str, Any]],
        learned_at: dict[tuple[str, str], int],
        rounds: list[dict[str, Any]],
        context_leaks: list[dict[str, Any]],
        cache_breaks: int,
        ready_s: float,
        elapsed_s: float,
    ) -> dict[str, Any]:
        groups: list[dict[str, Any]] = []
        provenance_leaks: list[dict[str, Any]] = []
        odd_leaks: list[dict[str, Any]] = []
        odd_targets = [t for t in truth.targets.values() if t.odd]
        all_groups = sorted(set(truth.members) | set(final), key=_group_order)
        for group in all_groups:
            snapshot = final.get(group, {"items": [], "version": 0})
            expected = truth.expected(group)
            rules = live_rules(snapshot)
            verdicts = []
            for item in rules:
                verdict, hits = classify(group, item["text"], truth)
                verdicts.append(
                    {
                        "item_id": item["item_id"],
                        "kind": item["kind"],
                        "status": item["status"],
                        "text": item["text"],
                        "verdict": verdict,
                        "targets": hits,
                    }
                )
            learned = [
                e.target
                for e in expected
                if any(rule_matches(r["text"], truth.targets[e.target].match) for r in rules)
            ]
            members = truth.members.get(group)
            org_members = {truth.org_of_user[u] for u in members} if members else set()
            for item in snapshot.get("items", []):
                if item["status"] not in LIVE:
                    continue
                users = set(item["provenance"].get("user_ids", []))
                if members is not None and not users <= members:
                    strangers = sorted(users - members)
                    provenance_leaks.append(
                        {
                            "group": group,
                            "item_id": item["item_id"],
                            "users": strangers,
                            "cross_tenant": any(
                                truth.org_of_user.get(u) not in org_members for u in strangers
                            ),
                        }
                    )
                if scope_of(group) in ("team", "org", "global"):
                    text = " ".join(
                        str(item.get(k) or "") for k in ("text", "response", "corrected")
                    )
                    wanted = [truth.targets[e.target] for e in expected]
                    if any(rule_matches(item["text"], t.match) for t in wanted):
                        continue  # e.g. "too casual, use a formal tone": the team's own rule
                    for target in odd_targets:
                        if rule_matches(text, target.match):
                            odd_leaks.append(
                                {
                                    "group": group,
                                    "target": target.id,
                                    "kind": item["kind"],
                                    "item_id": item["item_id"],
                                    "text": item["text"],
                                }
                            )
            counts: dict[str, int] = defaultdict(int)
            for v in verdicts:
                counts[v["verdict"]] += 1
            examples = [
                i for i in snapshot.get("items", []) if i["kind"] not in ("rule", "tool_rule")
            ]
            groups.append(
                {
                    "group": group,
                    "scope": scope_of(group),
                    "version": snapshot.get("version", 0),
                    "expected": sorted(e.target for e in expected),
                    "learned": sorted(learned),
                    "missing": sorted({e.target for e in expected} - set(learned)),
                    "recall": len(learned) / len(expected) if expected else None,
                    "rules": len(rules),
                    "verdicts": dict(counts),
                    "precision": counts["correct"] / len(rules) if rules else None,
                    "proposed": sum(1 for r in rules if r["status"] == "proposed"),
                    "examples_live": sum(1 for i in examples if i["status"] in LIVE),
                    "rule_details": verdicts,
                }
            )
        learning = []
        for e in truth.expectations:
            at = learned_at.get((e.group, e.target))
            members = truth.members[e.group]
            upto = [s for s in events if at is not None and s.round <= at and s.user in members]
            learning.append(
                {
                    "group": e.group,
                    "target": e.target,
                    "status": e.status,
                    "learned_round": at,
                    "events_in_group": len(upto) if at is not None else None,
                    "feedback_about_it": (
                        sum(
                            1
                            for s in upto
                            if s.pref == e.target
                            and s.event["type"] in ("explanation", "edit", "rating")
                            and s.noise is None
                        )
                        if at is not None
                        else None
                    ),
                    "explanations_edits": (
                        sum(
                            1
                            for s in upto
                            if s.pref == e.target
                            and s.event["type"] in ("explanation", "edit")
                            and s.noise is None
                        )
                        if at is not None
                        else None
                    ),
                }
            )
        changes = self._changes(truth, final)
        totals = _totals(groups)
        first = next((r for r in rounds if r["context_tokens_max"] > 0), None)
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "sink": self.sink,
            "events": len(events),
            "rounds": self.scenario.rounds,
            "ready_s": round(ready_s, 1),
            "elapsed_s": round(elapsed_s, 1),
            "policy": self.settings.policy.model_dump(by_alias=True),
            "totals": totals,
            "groups": groups,
            "learning": learning,
            "changes": changes,
            "leakage": {
                "cross_group": len(provenance_leaks)
                + sum(1 for g in groups for v in g["rule_details"] if v["verdict"] == "foreign")
                + sum(1 for c in context_leaks if not c["cross_tenant"]),
                "cross_tenant": sum(1 for p in provenance_leaks if p["cross_tenant"])
                + sum(1 for c in context_leaks if c["cross_tenant"]),
                "odd_in_team_org_rules": sum(
                    1 for o in odd_leaks if o["kind"] in ("rule", "tool_rule")
                ),
                "odd_in_team_org_examples": sum(
                    1 for o in odd_leaks if o["kind"] not in ("rule", "tool_rule")
                ),
                "provenance": provenance_leaks,
                "context": context_leaks,
                "odd": odd_leaks,
            },
            "context": {
                "rounds": rounds,
                "cache_breaks": cache_breaks,
                "first_tokens_max": first["context_tokens_max"] if first else 0,
                "last_tokens_max": rounds[-1]["context_tokens_max"] if rounds else 0,
                "budget": 800,
            },
        }

    def _changes(self, truth: Truth, final: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        seen: set[tuple[str, str, str]] = set()
        for change in truth.changes:
            for group in (f"user:{change['user']}", f"team:{change['team']}"):
                for new in change["to"] or [None]:
                    key = (group, change["from"], str(new))
                    if key in seen:
                        continue
                    seen.add(key)
                    snapshot = final.get(group, {"items": []})
                    rules = live_rules(snapshot)
                    old_t = truth.targets[change["from"]]
                    old_live = [r["text"] for r in rules if rule_matches(r["text"], old_t.match)]
                    new_t = truth.targets[new] if new else None
                    new_live = [
                        r["text"] for r in rules if new_t and rule_matches(r["text"], new_t.match)
                    ]
                    superseded = [
                        i["text"]
                        for i in snapshot.get("items", [])
                        if i["status"] == "superseded" and rule_matches(i["text"], old_t.match)
                    ]
                    new_expected = any(
                        e.group == group and e.target == new for e in truth.expectations
                    )
                    if new_live and not old_live:
                        verdict = "replaced"
                    elif new_live:
                        verdict = "old rule still live next to the new one"
                    elif new_expected:
                        verdict = "new rule not learned"
                    elif old_live:
                        verdict = "old rule still live; too little evidence for the new one yet"
                    else:
                        verdict = "neither learned; too little evidence for the new one yet"
                    out.append(
                        {
                            "group": group,
                            "from": change["from"],
                            "to": new,
                            "old_still_live": old_live,
                            "new_live": new_live,
                            "new_expected": new_expected,
                            "old_superseded": superseded,
                            "replaced": bool(new_live) and not old_live,
                            "verdict": verdict,
                        }
                    )
        return out


def _team(truth: Truth, user: str) -> str:
    for group, members in truth.members.items():
        if group.startswith("team:") and user in members:
            return group.split(":", 1)[1]
    return ""


def _group_order(group: str) -> tuple[int, str]:
    order = {"user": 0, "team": 1, "org": 2, "global": 3}
    return (order.get(scope_of(group), 4), group)


def _totals(groups: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scope in ("user", "team", "org", "global", "all"):
        chosen = [g for g in groups if scope in ("all", g["scope"])]
        expected = sum(len(g["expected"]) for g in chosen)
        learned = sum(len(g["learned"]) for g in chosen)
        rules = sum(g["rules"] for g in chosen)
        correct = sum(g["verdicts"].get("correct", 0) for g in chosen)
        out[scope] = {
            "expected": expected,
            "learned": learned,
            "recall": learned / expected if expected else None,
            "rules": rules,
            "correct": correct,
            "precision": correct / rules if rules else None,
        }
    return out


def matched(text: str, truth: Truth) -> list[str]:
    return matched_targets(text, truth.targets.values())
