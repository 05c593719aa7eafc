"""Rich tables for benchmark reports (the JSON holds everything; tables show the gist)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def render_quality(report: dict[str, Any], console: Console) -> None:
    """The quality report: per group, per preference, leakage, changes, context size."""
    loop = ", closed loop" if report.get("closed_loop") else ""
    title = (
        f"learning quality: scenario {report['scenario']} (seed {report['seed']}, "
        f"{report['events']} events, {report['rounds']} rounds, sink {report['sink']}{loop})"
    )
    table = Table(title=title, title_justify="left")
    for column in (
        "group",
        "expected",
        "learned",
        "recall",
        "rules",
        "correct",
        "precision",
        "other rules",
        "missing",
    ):
        table.add_column(column, overflow="fold")
    for g in report["groups"]:
        if not g["expected"] and not g["rules"]:
            continue
        other = ", ".join(f"{k} {v}" for k, v in sorted(g["verdicts"].items()) if k != "correct")
        if g["proposed"]:
            other = (other + ", " if other else "") + f"{g['proposed']} awaiting approval"
        table.add_row(
            g["group"],
            str(len(g["expected"])),
            str(len(g["learned"])),
            _pct(g["recall"]),
            str(g["rules"]),
            str(g["verdicts"].get("correct", 0)),
            _pct(g["precision"]),
            other,
            ", ".join(g["missing"]),
        )
    for scope, t in report["totals"].items():
        table.add_row(
            f"[bold]{scope} groups[/bold]",
            str(t["expected"]),
            str(t["learned"]),
            _pct(t["recall"]),
            str(t["rules"]),
            str(t["correct"]),
            _pct(t["precision"]),
            "",
            "",
        )
    console.print(table)

    learn = Table(title="events needed to learn each expected preference", title_justify="left")
    for column in (
        "group",
        "preference",
        "learned after round",
        "events in group",
        "feedback about it",
        "explanations+edits",
    ):
        learn.add_column(column)
    for row in report["learning"]:
        at = row["learned_round"]
        learn.add_row(
            row["group"],
            row["target"] + (" (proposed)" if row["status"] == "proposed" else ""),
            "not learned" if at is None else str(at + 1),
            "—" if at is None else str(row["events_in_group"]),
            "—" if at is None else str(row["feedback_about_it"]),
            "—" if at is None else str(row["explanations_edits"]),
        )
    console.print(learn)

    leak = report["leakage"]
    checks = Table(title="isolation and change", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_row("cross-group leaks (provenance, rule text, context)", str(leak["cross_group"]))
    checks.add_row("cross-tenant leaks", str(leak["cross_tenant"]))
    checks.add_row(
        "odd users' preferences in team/org/global rules", str(leak["odd_in_team_org_rules"])
    )
    checks.add_row(
        "odd users' preferences in team/org/global examples", str(leak["odd_in_team_org_examples"])
    )
    for c in report["changes"]:
        checks.add_row(
            f"{c['group']}: {c['from']} -> {c['to']}",
            f"{c['verdict']} ({len(c['old_superseded'])} old item(s) superseded)",
        )
    for d in report.get("dissenters", []):
        checks.add_row(
            f"dissenter {d['user']}: own {d['holds']} vs {d['group']}'s {d['opposes']}",
            d["verdict"],
        )
    ctx = report["context"]
    checks.add_row("prefix changed while memory versions did not", str(ctx["cache_breaks"]))
    rounds = ctx["rounds"]
    if len(rounds) >= 2:
        mid, end = rounds[(len(rounds) - 1) // 2], rounds[-1]

        def grew(key: str) -> str:
            before, after = mid[key], end[key]
            change = f" ({(after - before) / before:+.0%})" if before else ""
            return f"{before:.0f} -> {after:.0f}{change}"

        checks.add_row(
            f"context tokens per request, rounds {mid['round'] + 1} -> {end['round'] + 1} "
            f"(events {mid['events_sent']} -> {end['events_sent']})",
            f"learnloop mean {grew('context_tokens_mean')}, max {end['context_tokens_max']} "
            f"(budget {ctx['budget']}); append-all-feedback mean {grew('naive_tokens_mean')}",
        )
    console.print(checks)

    size = Table(
        title="per round: context per request (tokens) as feedback grows, and responses that "
        "violated a preference",
        title_justify="left",
    )
    for column in (
        "after round",
        "events sent",
        "learnloop mean",
        "learnloop max",
        "prefix bytes max",
        "append-all-feedback mean",
        "append-all max",
        "violating responses",
    ):
        size.add_column(column, justify="right")
    for r in ctx["rounds"]:
        size.add_row(
            str(r["round"] + 1),
            str(r["events_sent"]),
            f"{r['context_tokens_mean']:.0f}",
            str(r["context_tokens_max"]),
            str(r["prefix_bytes_max"]),
            f"{r['naive_tokens_mean']:.0f}",
            str(r["naive_tokens_max"]),
            "—" if r.get("violation_rate") is None else f"{r['violation_rate']:.0%}",
        )
    console.print(size)
