"""``learnloop bench ...``: benchmarks that print a table and write JSON."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

bench_app = typer.Typer(
    help="Benchmarks on the real pipeline: learning quality and performance.",
    no_args_is_help=True,
)
console = Console(width=None if Console().is_terminal else 150)
err = Console(stderr=True)
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write the full report here.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="learnloop settings.")]


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        err.print(f"wrote {path}")


@bench_app.command()
def quality(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            "-s",
            help="Built-in name or YAML file; repeat for several (default: all).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: each scenario's).")] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Run each scenario over this many rounds.", min=1)
    ] = None,
    sink: Annotated[str, typer.Option(help="kafka or http (POST /v1/events).")] = "kafka",
    closed_loop: Annotated[
        bool,
        typer.Option(
            "--closed-loop",
            help="The simulated agent follows the rules in its /v1/context (the stream then "
            "depends on what was learned, so it is no longer byte-identical).",
        ),
    ] = False,
    json_out: JsonOption = None,
    config: ConfigOption = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep data and logs here instead of a temp dir.")
    ] = None,
) -> None:
    """Run scenarios through a fresh `learnloop up` and score memory against hidden preferences."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from learnloop.bench.quality import QualityRun
    from learnloop.bench.report import render_quality
    from learnloop.errors import LearnloopError
    from learnloop.settings import load_settings
    from learnloop.simulate.scenario import builtin_scenarios, load_scenario

    if sink not in ("kafka", "http"):
        err.print("[red]error:[/red] --sink must be kafka or http")
        raise typer.Exit(2)
    names = scenario or list(builtin_scenarios())
    try:
        settings = load_settings(config)
        scenarios = [load_scenario(name) for name in names]
        if rounds is not None:
            scenarios = [s.with_rounds(rounds) for s in scenarios]
    except LearnloopError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    reports = []
    for loaded in scenarios:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} rounds"),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task(f"{loaded.name}: starting learnloop up…", total=loaded.rounds)

            def step(
                description: str, done: int, total: int, task: Any = task, name: str = loaded.name
            ) -> None:
                progress.update(task, description=f"{name}: {description}", completed=done)

            with tempfile.TemporaryDirectory(prefix=f"bench-{loaded.name}-") as tmp:
                base = workdir / loaded.name if workdir else Path(tmp)
                try:
                    report = QualityRun(
                        loaded,
                        settings,
                        base,
                        seed=seed,
                        sink=sink,
                        config=config,
                        progress=step,
                        closed_loop=closed_loop,
                    ).run()
                except LearnloopError as exc:
                    err.print(f"[red]error:[/red] {loaded.name}: {exc}")
                    raise typer.Exit(1) from None
        render_quality(report, console)
        reports.append(report)
    _write(json_out, {"benchmark": "quality", "reports": reports})


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


@bench_app.command()
def latency(
    trials: Annotated[int, typer.Option(help="Trials per scope.", min=1)] = 30,
    scope: Annotated[
        list[str] | None, typer.Option(help="user and/or team (default: both).")
    ] = None,
    poll_ms: Annotated[int, typer.Option(help="Polling interval of /v1/context.", min=1)] = 20,
    json_out: JsonOption = None,
    config: ConfigOption = None,
) -> None:
    """End-to-end learning latency: trigger-completing event -> rule in /v1/context."""
    from rich.table import Table

    from learnloop.bench.latency import run_latency
    from learnloop.errors import LearnloopError

    scopes = tuple(scope or ("user", "team"))
    if not set(scopes) <= {"user", "team"}:
        err.print("[red]error:[/red] --scope must be user or team")
        raise typer.Exit(2)
    with _progress() as progress, tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        task = progress.add_task("starting learnloop up…", total=trials * len(scopes))

        def step(description: str, done: int, total: int) -> None:
            progress.update(task, description=description, completed=done)

        try:
            report = run_latency(Path(tmp), trials, scopes, poll_ms, config, step)
        except LearnloopError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    table = Table(
        title=(
            "end-to-end learning latency (offline synthesizer): last event of a trigger "
            f"confirmed -> rule in /v1/context (polled every {poll_ms} ms)"
        ),
        title_justify="left",
    )
    for column in (
        "scope",
        "trials",
        "learned",
        "timed out",
        "p50 ms",
        "p95 ms",
        "max ms",
        "worker p50 ms",
        "API+poll p50 ms",
    ):
        table.add_column(column, justify="right")
    for name, row in report["scopes"].items():
        table.add_row(
            name,
            str(row["trials"]),
            str(row["learned"]),
            str(row["timed_out"]),
            *(
                ("—" if row[k] is None else f"{row[k]:,.0f}")
                for k in ("p50_ms", "p95_ms", "max_ms", "worker_p50_ms", "api_p50_ms")
            ),
        )
    console.print(table)
    _write(json_out, report)


def _script(name: str) -> Path:
    """A script of the checkout's benchmarks/ folder (the commands wrap them, not copy them)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / name
    if not path.is_file():
        err.print(f"[red]error:[/red] {path} not found: run from a source checkout")
        raise typer.Exit(2)
    return path


def _run_script(name: str, args: list[str], description: str) -> dict[str, Any]:
    import subprocess
    import sys

    with _progress() as progress, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "out.json"
        progress.add_task(description, total=None)
        result = subprocess.run(
            [sys.executable, str(_script(name)), *args, "--json", str(out)],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0 or not out.is_file():
            err.print(result.stdout.decode()[-2000:] + result.stderr.decode()[-3000:])
            err.print(f"[red]error:[/red] benchmarks/{name} failed ({result.returncode})")
            raise typer.Exit(1)
        return dict(orjson.loads(out.read_bytes()))


@bench_app.command()
def throughput(
    events: Annotated[
        int, typer.Option(help="Events to push through one worker.", min=100)
    ] = 50_000,
    json_out: JsonOption = None,
) -> None:
    """Ingest throughput of one worker process next to raw aiokafka in the same run.

    Wraps benchmarks/pipeline_throughput.py (the script stays the one source of the method).
    """
    from rich.table import Table

    report = _run_script(
        "pipeline_throughput.py",
        ["--events", str(events)],
        f"pipeline_throughput.py --events {events} (embedded broker + 1 worker)…",
    )
    table = Table(
        title=f"throughput: {report['events']:,} events, {report['signals']:,} group signals, "
        "1 worker process, embedded broker",
        title_justify="left",
    )
    table.add_column("measure")
    table.add_column("per second", justify="right")
    for name, value in report["rows"].items():
        table.add_row(name, f"{value:,.0f}")
    raw = report["rows"].get("raw aiokafka consume + Avro decode/validate")
    worker = report["worker"]
    if raw:
        table.add_row("worker / raw consume+decode", f"{worker['events_per_s'] / raw:.2%}")
    table.add_row("worker peak RSS (MB)", f"{worker['peak_rss_mb']:,.0f}")
    for stage, micros in report.get("processors", {}).items():
        if stage not in ("events_per_s", "groups"):
            table.add_row(f"processors alone: {stage} (µs per event)", f"{micros:,.1f}")
    console.print(table)
    _write(json_out, {"benchmark": "throughput", **report})


@bench_app.command()
def context(
    groups: Annotated[int, typer.Option(help="Groups of memory.", min=1)] = 300,
    items: Annotated[
        list[int] | None, typer.Option(help="Items per group; repeat to compare (default 20, 200).")
    ] = None,
    requests: Annotated[int, typer.Option(help="Requests per run (httpx client).", min=10)] = 2000,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.", min=1)] = 8,
    client: Annotated[
        str,
        typer.Option(help="httpx, wrk (fixed duration) or both; the first one goes in the table."),
    ] = "httpx",
    json_out: JsonOption = None,
) -> None:
    """/v1/context latency and requests/s for one API process, as items per group grow.

    Wraps benchmarks/context_latency.py once per --items value.
    """
    from rich.table import Table

    if client not in ("httpx", "wrk", "both"):
        err.print("[red]error:[/red] --client must be httpx, wrk or both")
        raise typer.Exit(2)
    runs = []
    for n in items or [20, 200]:
        args = ["--groups", str(groups), "--items", str(n), "--requests", str(requests)]
        args += ["--concurrency", str(concurrency), "--client", client]
        runs.append(
            _run_script(
                "context_latency.py",
                args,
                f"context_latency.py {' '.join(args)}…",
            )
        )
    table = Table(
        title=f"/v1/context: 1 API process, embedded store, {groups} groups, "
        f"concurrency {concurrency}",
        title_justify="left",
    )
    columns = ("items/group", "points", "client", "requests", "p50 ms", "p99 ms", "requests/s")
    for column in (*columns, "index s"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            str(run["items_per_group"]),
            f"{run['points']:,}",
            str(run.get("client", "httpx")),
            f"{run['requests']:,}",
            f"{run['p50_ms']:.1f}",
            f"{run['p99_ms']:.1f}",
            f"{run['requests_per_s']:,.0f}",
            f"{run['api_read_and_index_s']:.1f}",
        )
    console.print(table)
    _write(json_out, {"benchmark": "context", "runs": runs})


@bench_app.command()
def memory(
    users: Annotated[int, typer.Option(help="Users (each its own user: group).", min=10)] = 10_000,
    json_out: JsonOption = None,
    config: ConfigOption = None,
) -> None:
    """Worker RSS with many groups, and the growth of each cost when groups and events grow 10x."""
    from rich.table import Table

    from learnloop.bench.memory import run_memory
    from learnloop.errors import LearnloopError
    from learnloop.settings import load_settings

    settings = load_settings(config)
    with _progress() as progress, tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        task = progress.add_task("starting learnloop up…", total=None)

        def step(description: str, done: int, total: int) -> None:
            progress.update(task, description=description, completed=done, total=total)

        try:
            report = run_memory(Path(tmp), users, settings.topics.events, config, step)
        except LearnloopError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    table = Table(
        title="worker memory and growth (1 worker, embedded broker; users in teams of 10, "
        f"orgs of 100; idle worker RSS {report['worker_rss_idle_mb']:.0f} MB)",
        title_justify="left",
    )
    for column in (
        "users",
        "groups",
        "events (total)",
        "phase events",
        "phase s",
        "events/s",
        "worker RSS MB",
        "peak RSS MB",
        "context p50 ms",
    ):
        table.add_column(column, justify="right")
    for row in report["phases"]:
        table.add_row(
            f"{row['users']:,}",
            f"{row['groups']:,}",
            f"{row['events_total']:,}",
            f"{row['events_phase']:,}",
            f"{row['phase_s']:.1f}",
            f"{row['events_per_s']:,.0f}",
            f"{row['worker_rss_mb']:.0f}",
            f"{row['worker_peak_rss_mb']:.0f}",
            f"{row['context_p50_ms']:.1f}",
        )
    phases = report["phases"]
    if len(phases) == 2 and phases[0]["events_phase"]:
        a, b = phases
        table.add_row(
            "growth",
            f"{b['groups'] / a['groups']:.1f}x",
            f"{b['events_total'] / a['events_total']:.1f}x",
            "",
            "",
            f"{b['events_per_s'] / a['events_per_s']:.2f}x",
            f"{b['worker_rss_mb'] / a['worker_rss_mb']:.2f}x",
            "",
            f"{b['context_p50_ms'] / a['context_p50_ms']:.2f}x",
        )
    if len(phases) == 2 and phases[1]["groups"] > phases[0]["groups"]:
        a, b = phases
        per_group = (b["worker_rss_mb"] - a["worker_rss_mb"]) * 1024 / (b["groups"] - a["groups"])
        report["rss_kb_per_added_group"] = round(per_group, 1)
        table.caption = f"worker RSS added per added group: {per_group:.1f} KB"
    console.print(table)
    _write(json_out, report)
