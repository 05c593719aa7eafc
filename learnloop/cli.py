"""The `learnloop` command: up, worker, api, emit, export and rebuild-index."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, cast

import orjson
import structlog
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.errors import InvalidEvent, LearnloopError
from learnloop.logging import configure_logging
from learnloop.settings import Settings, load_settings

app = typer.Typer(
    help="learnloop: continuous, versioned memory for LLM agents, learned from their feedback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (LEARNLOOP_CONFIG also works)."),
]
log = structlog.get_logger("learnloop.cli")


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except LearnloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


RUNTIME_FILE = "up.json"


def _require_bootstrap(settings: Settings, command: str) -> str:
    if settings.kafka_bootstrap is None and command in ("emit", "export"):
        runtime = settings.data_dir / RUNTIME_FILE
        if runtime.is_file():  # a running `learnloop up` wrote where its broker is
            return str(orjson.loads(runtime.read_bytes())["bootstrap"])
    if settings.kafka_bootstrap is None:
        console.print(
            f"[red]error:[/red] `learnloop {command}` needs LEARNLOOP_KAFKA_BOOTSTRAP "
            "(use `learnloop up` for the embedded broker)"
        )
        raise typer.Exit(2)
    return settings.kafka_bootstrap


@app.command()
def up(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port of the HTTP API and web page.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
) -> None:
    """Run everything on this machine: broker, vector store, worker, API and web page."""
    from learnloop.processes import bind_api_socket, build_api_server, spawn_worker
    from learnloop.topics import ensure_topics

    settings = _settings(config, api_port=port, api_host=host)
    broker: EmbeddedBroker | None = None
    worker: subprocess.Popen[bytes] | None = None
    _stop_on_sigterm()
    if not settings.auth_enabled and not settings.loopback:
        # create_api refuses this too; saying it before the start-up saves a minute
        console.print(
            f"[red]error:[/red] refusing to serve {settings.api_host} without authentication: "
            "configure api_keys (LEARNLOOP_API_KEYS) or bind 127.0.0.1"
        )
        raise typer.Exit(2)
    try:
        listener = bind_api_socket(settings.api_host, settings.api_port)
    except LearnloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("starting the embedded broker (Tansu)…")
            if settings.embedded_broker:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                broker = EmbeddedBroker(log_file=settings.data_dir / "broker.log").start()
                bootstrap = broker.bootstrap
                settings = settings.with_overrides(kafka_bootstrap=bootstrap)
                settings = settings.with_overrides(broker_true_end_offsets=True)
            else:
                bootstrap = str(settings.kafka_bootstrap)
            progress.update(task, description=f"creating topics on {bootstrap}…")
            asyncio.run(ensure_topics(bootstrap, settings))
            progress.update(task, description="starting the stream worker…")
            worker_port = free_port()
            worker = spawn_worker(bootstrap, settings, worker_port)
            progress.update(task, description="waiting for the worker to join and recover…")
            _wait_worker_ready(worker, worker_port)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = settings.data_dir / RUNTIME_FILE
        runtime.write_bytes(
            orjson.dumps(
                {
                    "bootstrap": bootstrap,
                    "api": f"http://{settings.api_host}:{settings.api_port}",
                    "worker_metrics": f"http://127.0.0.1:{worker_port}/metrics",
                    "pids": {
                        "up": os.getpid(),
                        "worker": worker.pid,
                        "broker": broker.pid if broker else None,
                    },
                }
            )
        )
        store = settings.qdrant_url or f"embedded ({settings.data_dir / 'vectors'})"
        console.print(
            f"[green]learnloop is up[/green]\n"
            f"  web page   http://{settings.api_host}:{settings.api_port}/\n"
            f"  API        http://{settings.api_host}:{settings.api_port}/v1 "
            f"(OpenAPI at /openapi.json)\n"
            f"  broker     {bootstrap}{' (embedded Tansu)' if broker else ''}\n"
            f"  store      {store}\n"
            f"  worker     pid {worker.pid}, metrics at http://127.0.0.1:{worker_port}/metrics\n"
            "Ctrl-C stops everything."
        )
        build_api_server(settings, bootstrap).run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: a requested, clean shutdown
    except LearnloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        listener.close()
        (settings.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        _stop_child(worker)
        if broker is not None:
            broker.stop()
        console.print("learnloop stopped")


def _wait_worker_ready(
    worker: subprocess.Popen[bytes], port: int, timeout_s: float = 180.0
) -> None:
    """Block until the worker's /readyz says yes, so `up` is ready only when all of it is."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise LearnloopError(f"the worker exited with code {worker.returncode}; see its log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise LearnloopError(f"the worker was not ready within {timeout_s} s")


def _stop_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C so that the finally blocks stop every child."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _stop_child(process: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run one stream worker against LEARNLOOP_KAFKA_BOOTSTRAP (scale by running more)."""
    from streams.run import run_worker

    settings = _settings(config)
    try:
        run_worker(settings, _require_bootstrap(settings, "worker"))
    except LearnloopError as exc:  # the broker did not answer while creating topics
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def api(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
) -> None:
    """Serve the HTTP API and web page against a Kafka cluster and the vector store."""
    from learnloop.processes import run_api

    settings = _settings(config, api_port=port, api_host=host)
    _stop_on_sigterm()
    try:
        run_api(settings, _require_bootstrap(settings, "api"))
    except KeyboardInterrupt:
        pass  # uvicorn drained in-flight requests and re-raised the signal: a clean stop
    except LearnloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command("rebuild-index")
def rebuild_index_command(config: ConfigOption = None) -> None:
    """Rebuild the vector index from the memory versions log (stop the API first)."""
    from learnloop.processes import rebuild_index

    settings = _settings(config)
    servers = _require_bootstrap(settings, "rebuild-index")
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        progress.add_task("reading the versions log and re-indexing…")
        try:
            result = asyncio.run(rebuild_index(settings, servers))
        except (LearnloopError, TimeoutError) as exc:
            console.print(f"[red]error:[/red] {exc or 'timed out reading the log'}")
            raise typer.Exit(1) from None
    print(orjson.dumps(result).decode())


def _lines(source: Path) -> Iterator[tuple[int, bytes]]:
    handle = sys.stdin.buffer if str(source) == "-" else source.open("rb")
    with contextlib.closing(handle) if handle is not sys.stdin.buffer else contextlib.nullcontext():
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


@app.command()
def emit(
    source: Annotated[Path, typer.Argument(help="JSONL file of events, or - for stdin.")],
    config: ConfigOption = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    batch: Annotated[int, typer.Option(help="Events per confirmed batch.", min=1)] = 500,
    wire: Annotated[str, typer.Option(help="avro or json on the wire.")] = "avro",
    strict: Annotated[bool, typer.Option(help="Stop at the first invalid line.")] = False,
) -> None:
    """Send events from a JSONL file or stdin; invalid lines are reported and skipped.

    Without a bootstrap server it sends to the broker of a running `learnloop up`.
    """
    from learnloop.codec import make_codec
    from learnloop.producer import EventProducer
    from schemas import WireFormat

    settings = _settings(config, kafka_bootstrap=bootstrap)
    servers = _require_bootstrap(settings, "emit")
    if source != Path("-") and not source.is_file():
        console.print(f"[red]error:[/red] {source} does not exist")
        raise typer.Exit(2)

    async def run() -> tuple[int, int]:
        sent = rejected = 0
        async with EventProducer(
            servers, settings.topics.events, codec=make_codec(settings), wire=WireFormat(wire)
        ) as producer:
            pending: list[tuple[bytes, bytes, str]] = []
            with Progress(
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                disable=not console.is_terminal,
            ) as progress:
                task = progress.add_task("sending", total=None)
                for number, line in _lines(source):
                    try:
                        pending.append(producer.prepare(orjson.loads(line)))
                    except (orjson.JSONDecodeError, InvalidEvent) as exc:
                        rejected += 1
                        console.print(f"line {number}: {exc}")
                        if strict:
                            raise typer.Exit(1) from None
                        continue
                    if len(pending) >= batch:
                        sent += len(await producer.send_prepared(pending))
                        pending = []
                        progress.update(task, description=f"sent {sent}")
                if pending:
                    sent += len(await producer.send_prepared(pending))
        return sent, rejected

    try:
        sent, rejected = asyncio.run(run())
    except LearnloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    print(orjson.dumps({"sent": sent, "rejected": rejected}).decode())
    if rejected:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    group: Annotated[str, typer.Option(help="The preference group, e.g. team:search.")],
    fmt: Annotated[str, typer.Option("--format", help="sft, dpo or kto.")],
    out: Annotated[Path, typer.Option(help="JSONL file to write (replaced atomically).")],
    config: ConfigOption = None,
    layout: Annotated[
        str, typer.Option(help="messages (TRL conversational), prompt_completion or openai.")
    ] = "messages",
    since: Annotated[
        str | None, typer.Option(help="Only feedback at or after this time (ISO 8601 or epoch ms).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only feedback before this time (ISO 8601 or epoch ms).")
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="Share of an interaction's ratings that must agree (0-1).")
    ] = 0.0,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
) -> None:
    """Export one group's feedback as a fine-tuning dataset (see docs/EXPORT.md).

    Without a bootstrap server it reads from the broker of a running `learnloop up`.
    Prints a JSON summary: rows written by source, and what was left out and why.
    """
    from rich.progress import BarColumn, MofNCompleteColumn

    from learnloop.export import ExportError, Format, Layout, export, parse_time_ms

    settings = _settings(config, kafka_bootstrap=bootstrap)
    servers = _require_bootstrap(settings, "export")
    try:
        since_ms = parse_time_ms(since) if since is not None else None
        until_ms = parse_time_ms(until) if until is not None else None
    except ExportError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with Progress(
        TextColumn("reading events"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("export", total=None)
        try:
            summary = asyncio.run(
                export(
                    settings,
                    servers,
                    group,
                    cast("Format", fmt),  # export checks it and names the choices
                    out,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    min_agreement=min_agreement,
                    layout=cast("Layout", layout),
                    progress=lambda done: progress.update(task, completed=done),
                    on_total=lambda total: progress.update(task, total=total),
                )
            )
        except ExportError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        except (LearnloopError, TimeoutError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc or 'timed out reading the events topic'}")
            raise typer.Exit(1) from None
    print(orjson.dumps(summary.as_dict()).decode())


from learnloop.bench.cli import bench_app  # noqa: E402  (registered last, imports lazily)
from learnloop.simulate.command import simulate  # noqa: E402

app.add_typer(bench_app, name="bench")
app.command()(simulate)


def main() -> None:
    app()
