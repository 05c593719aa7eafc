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
    sink: Annotated[str, typer.Option(help="kafka or http (POST /v1/events).")] = "kafka",
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
                        loaded, settings, base, seed=seed, sink=sink, config=config, progress=step
                    ).run()
                except LearnloopError as exc:
                    err.print(f"[red]error:[/red] {loaded.name}: {exc}")
                    raise typer.Exit(1) from None
        render_quality(report, console)
        reports.append(report)
    _write(json_out, {"benchmark": "quality", "reports": reports})
