"""Running a worker: start the Faust app in this process until told to stop."""

from __future__ import annotations

import faust
import structlog

from learnloop.settings import Settings
from streams.app import create_app

log = structlog.get_logger(__name__)


def run_worker(settings: Settings, bootstrap: str | None = None) -> None:
    """Block running one worker; SIGTERM/SIGINT stop it gracefully (commit, leave group)."""
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = create_app(settings, bootstrap=bootstrap)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        override_logging=False,
        console_port=None,
    )
    log.info("worker starting", app_id=settings.app_id, broker=str(app.conf.broker[0]))
    worker.execute_from_commandline()
