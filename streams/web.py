"""The worker's own HTTP endpoints (Faust's web server): health, readiness, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from streams.app import WorkerApp


def is_ready(app: WorkerApp) -> tuple[bool, str]:
    """Ready means: consumer running, partitions assigned, table recovery finished."""
    if app.rebalancing:
        return False, "rebalancing"
    if app.in_recovery or not app.tables.recovery.completed.is_set():
        return False, "recovering tables"
    if not app.assignor.assigned_actives():
        return False, "no partitions assigned"
    return True, "ready"


def register(app: WorkerApp) -> None:
    @app.page("/healthz")  # type: ignore[misc]
    async def healthz(self: web.View, request: web.Request) -> Any:
        return self.json({"status": "alive"})

    @app.page("/readyz")  # type: ignore[misc]
    async def readyz(self: web.View, request: web.Request) -> Any:
        ready, reason = is_ready(app)
        return self.json({"ready": ready, "reason": reason}, status=200 if ready else 503)

    @app.page("/metrics")  # type: ignore[misc]
    async def metrics_view(self: web.View, request: web.Request) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
