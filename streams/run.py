"""Running a worker: create its topics, then start the Faust app until told to stop."""

from __future__ import annotations

import asyncio
import gc

import faust
import structlog

from learnloop.settings import Settings
from learnloop.topics import ensure_topics
from streams.app import create_app

log = structlog.get_logger(__name__)

#: allocations between young-generation collections (CPython's default is 700)
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often, and never again scan what start-up loaded.

    A micro-batch allocates tens of thousands of short-lived dicts and strings
    (decoded events, signals, JSON), so with CPython's default threshold the
    cyclic collector ran thousands of times per second and each run also walked
    the long-lived tables: measured on the pure join, 30-50% of its time.
    ``gc.freeze()`` moves everything loaded so far (modules, Faust, settings) out
    of the collector's sight; a larger young generation makes collections rare
    and cheap. Reference counting still frees almost everything immediately.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


def run_worker(settings: Settings, bootstrap: str | None = None) -> None:
    """Block running one worker; SIGTERM/SIGINT stop it gracefully (commit, leave group).

    The topics are created first, as ``learnloop api`` and ``up`` do: Faust creates
    only the topics its agents read, so the ones the worker only writes (dead
    letters, results) would otherwise be auto-created by the broker with its default
    partition count on the first send. Raises ``BrokerError`` if the broker does not
    answer in time.
    """
    servers = bootstrap or settings.kafka_bootstrap
    if servers is None:
        raise ValueError("run_worker needs a bootstrap server")
    asyncio.run(ensure_topics(servers, settings))
    app = create_app(settings, bootstrap=servers)
    log.info("worker starting", app_id=settings.app_id, broker=str(app.conf.broker[0]))
    run_app(app, settings)


def run_app(app: faust.App, settings: Settings) -> None:
    """Block running a Faust app as the worker runs: its data dir, logging and GC tuning.

    Shared with ``benchmarks/faust_floor.py``, whose bare agent must run exactly so.
    """
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        override_logging=False,
        console_port=None,
    )
    tune_gc()
    worker.execute_from_commandline()
