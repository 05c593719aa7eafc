"""``learnloop simulate``: generate a scenario's events and send or write them."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

console = Console(stderr=True)


def simulate(
    scenario: Annotated[
        str,
        typer.Argument(help="A built-in scenario (e.g. devtools, tuning/devtools) or a YAML file."),
    ] = "devtools",
    seed: Annotated[int | None, typer.Option(help="Seed; defaults to the scenario's.")] = None,
    start: Annotated[
        str | None, typer.Option(help="RFC 3339 time of the first event (default: the scenario's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write JSONL here (- for stdout).")
    ] = None,
    kafka: Annotated[
        str | None, typer.Option(help="Send to this Kafka bootstrap (or 'up' for a running up).")
    ] = None,
    http: Annotated[
        str | None, typer.Option(help="POST to this learnloop API base URL, /v1/events.")
    ] = None,
    topic: Annotated[str, typer.Option(help="Events topic for --kafka.")] = "learnloop.events",
    api_key: Annotated[str | None, typer.Option(help="API key for --http.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the built-in scenarios.")] = False,
) -> None:
    """Simulated users with hidden preferences: a seeded, deterministic event stream.

    Without --kafka or --http the events are written as JSONL (stdout by default);
    the same scenario and seed always give byte-identical output.
    """
    from learnloop.errors import LearnloopError
    from learnloop.simulate.generator import generate, to_jsonl
    from learnloop.simulate.scenario import builtin_scenarios, load_scenario

    if list_:
        import yaml

        for name, text in builtin_scenarios().items():
            about = " ".join(str(yaml.safe_load(text).get("description", "")).split())
            print(f"{name}\t{about[:90]}")
        return
    if sum(x is not None for x in (out, kafka, http)) > 1:
        console.print("[red]error:[/red] choose one of --out, --kafka and --http")
        raise typer.Exit(2)
    try:
        loaded = load_scenario(scenario)
        first = datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None
        events = generate(loaded, seed, first)
    except (LearnloopError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if kafka is None and http is None:
        data = to_jsonl(events)
        if out is None or str(out) == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            out.write_bytes(data)
            console.print(f"wrote {len(events)} events to {out}")
        return
    from learnloop.simulate.sink import HttpSink, KafkaSink, Sink

    if kafka == "up":
        from learnloop.settings import load_settings

        runtime = load_settings().data_dir / "up.json"
        if not runtime.is_file():
            console.print(f"[red]error:[/red] no running `learnloop up` ({runtime} is missing)")
            raise typer.Exit(2)
        kafka = str(orjson.loads(runtime.read_bytes())["bootstrap"])
    sink: Sink = KafkaSink(kafka, topic) if kafka else HttpSink(str(http), api_key)

    async def send() -> int:
        sent = 0
        async with sink:
            for i in range(0, len(events), 500):
                sent += await sink.send([e.event for e in events[i : i + 500]])
        return sent

    try:
        sent = asyncio.run(send())
    except LearnloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    print(orjson.dumps({"scenario": loaded.name, "seed": seed, "sent": sent}).decode())
