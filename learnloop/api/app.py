"""``create_api(settings, services)``: the FastAPI app of ``learnloop api`` and ``up``.

The app holds no global state: its producer, group view and store come in a
:class:`Services` object that the process builds and closes in the lifespan.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, ORJSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learnloop import metrics
from learnloop.api import context_route, problems
from learnloop.api.auth import CallerDep
from learnloop.api.body import read_limited
from learnloop.api.export_routes import build_export_router
from learnloop.api.group_view import GroupView
from learnloop.api.memory_log import MemoryLog
from learnloop.api.memory_routes import build_router
from learnloop.api.problems import Problem
from learnloop.errors import BrokerError, ConfigError
from learnloop.producer import EventProducer
from learnloop.settings import Settings
from processors.groups import scope_of
from schemas import from_json_event

log = structlog.get_logger(__name__)
JSON_TYPES = ("application/json", "application/x-ndjson")
# Newer FastAPI releases ask OpenTelemetry for its global providers on every request
# (reading os.environ each time, ~1.5 % of a /v1/context request). learnloop exports
# Prometheus metrics (``/metrics``) and sets up no OpenTelemetry, so they are off.
_NO_FASTAPI_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


@dataclass(slots=True)
class Services:
    """What the API talks to; started and stopped by the lifespan."""

    producer: EventProducer
    groups: GroupView
    memory: MemoryLog
    bootstrap: str  # for readers that start from the beginning of a topic (exports)

    async def start(self) -> None:
        await self.producer.start()
        await self.groups.start()
        await self.memory.start()

    async def stop(self) -> None:
        await self.memory.stop()
        await self.groups.stop()
        await self.producer.stop()
        await self.memory.store.close()


def create_api(settings: Settings, services: Services) -> FastAPI:
    """The HTTP API; see the brief for the public contract of each route."""
    if not settings.auth_enabled:
        if not settings.loopback:
            raise ConfigError(
                f"refusing to serve {settings.api_host} without authentication: "
                "configure api_keys (LEARNLOOP_API_KEYS) or bind 127.0.0.1"
            )
        log.warning(
            "AUTHENTICATION IS OFF: the API is open to anyone on this machine; "
            "configure api_keys before exposing it"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        log.info("api started", host=settings.api_host, port=settings.api_port)
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="learnloop",
        version="0.1.0",
        description="Continuous, versioned memory for LLM agents, learned from feedback.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        **_NO_FASTAPI_TELEMETRY,
    )
    app.state.settings = settings
    problems.install(app)

    metrics.time_gc_pauses()

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> ORJSONResponse:
        """Connected to the broker and the store, and following group state."""
        checks = {
            "broker": services.producer.connected,
            "group_view": services.groups.running,
            "memory_log": services.memory.running and services.memory.caught_up.is_set(),
            "store": await services.memory.store.ping(),
        }
        ready = all(checks.values())
        return ORJSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/events", status_code=202, tags=["ingest"])
    async def post_events(request: Request, who: CallerDep) -> ORJSONResponse:
        """Accept one event or a JSON array; publish the valid ones, name each rejected field."""
        who.require("ingest")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            metrics.INGEST_REJECTED.labels("content_type").inc()
            raise Problem(
                415,
                "unsupported_media_type",
                f"send application/json, not {content_type or 'nothing'}",
            )
        body = await read_limited(request, settings.max_event_bytes * 8)
        if not body.strip():
            raise Problem(400, "empty_body", "the body is empty; send an event or an array")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            metrics.INGEST_REJECTED.labels("malformed_json").inc()
            raise Problem(400, "malformed_json", str(exc)[:200]) from None
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items:
            raise Problem(400, "no_events", "the array is empty")
        prepared: list[tuple[bytes, bytes, str]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            record, errors = from_json_event(item, services.producer.codec.limits)
            if record is None:
                metrics.INGEST_REJECTED.labels("invalid_event").inc()
                event_id = item.get("event_id") if isinstance(item, dict) else None
                rejected.append(
                    {
                        "index": index,
                        "event_id": event_id if isinstance(event_id, str) else None,
                        "errors": [{"field": f, "reason": r} for f, r in errors],
                    }
                )
                continue
            if who.tenant != "*" and record["org_id"] != who.tenant:
                rejected.append(
                    {
                        "index": index,
                        "event_id": record["event_id"],
                        "errors": [
                            {
                                "field": "org_id",
                                "reason": f"this key may only send events of org {who.tenant}",
                            }
                        ],
                    }
                )
                continue
            prepared.append(services.producer.encode_record(record))
        try:
            deliveries = await services.producer.send_prepared(prepared) if prepared else []
        except BrokerError as exc:
            raise Problem(503, "broker_unavailable", str(exc)) from None
        return ORJSONResponse(
            {
                "accepted": len(deliveries),
                "event_ids": [d.event_id for d in deliveries],
                "rejected": rejected,
            },
            status_code=202,
        )

    @app.get("/v1/groups", tags=["memory"])
    async def list_groups(
        who: CallerDep,
        q: str = Query(default="", max_length=200, description="substring filter"),
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """Groups visible to the caller, sorted by id, paginated, with memory summaries."""
        who.require("read")
        names = sorted(set(services.groups.groups()) | set(services.memory.groups()))
        visible = [g for g in names if q in g and who.may_see(g, _owner(services, g))]
        page = visible[offset : offset + limit]
        return {
            "total": len(visible),
            "offset": offset,
            "groups": [_summary(g, services) for g in page],
        }

    @app.get("/v1/groups/{group}/stats", tags=["memory"])
    async def group_stats(group: str, who: CallerDep) -> dict[str, Any]:
        """The group's aggregates: counts by signal kind, contributors, last synthesis."""
        who.require("read")
        stats = services.groups.stats(group)
        if stats is None:
            raise Problem(404, "unknown_group", f"no state for group {group!r}")
        who.check_group(group, stats.get("org"))
        return stats

    context = context_route.ContextService(settings, services)
    context_router = context_route.build_context_router(context)
    app.include_router(context_router)
    app.include_router(build_router(settings, services))
    app.include_router(build_export_router(settings, services))
    # The last middleware added runs first: metrics see every request, fast path or not.
    app.add_middleware(
        context_route.ContextFastPath,
        service=context,
        settings=settings,
        route=context_router.routes[0],
    )
    app.add_middleware(RequestMetrics)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("learnloop.web").joinpath("index.html").read_text()
        return HTMLResponse(html)

    return app


class RequestMetrics:
    """Counts and times every HTTP request by route template and status code.

    A plain ASGI middleware on purpose: Starlette's ``BaseHTTPMiddleware`` (what
    ``@app.middleware("http")`` makes) runs each request in an extra task behind a
    memory stream, which cost about a tenth of the CPU of a ``/v1/context`` call.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (route, status) -> its counter and histogram: ``labels()`` looks them up under
        # a lock on every call; route templates and statuses are a bounded set.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the error handler answers 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")  # set by the router
            children = self._children.get((template, status))
            if children is None:
                children = self._children[(template, status)] = (
                    metrics.API_REQUESTS.labels(template, str(status)),
                    metrics.API_LATENCY.labels(template),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


def _owner(services: Services, group: str) -> str | None:
    return services.groups.owner(group)


def _summary(group: str, services: Services) -> dict[str, Any]:
    stats = services.groups.stats(group) or {}
    snapshot = services.memory.snapshot(group)
    items = snapshot["items"] if snapshot else []
    statuses = Counter(item["status"] for item in items)
    return {
        "group": group,
        "scope": scope_of(group),
        "version": snapshot["version"] if snapshot else 0,
        "items": dict(statuses),
        "pending_approvals": statuses.get("proposed", 0),
        "last_change_ms": snapshot["created_ms"] if snapshot else None,
        "events": stats.get("events", 0),
        "distinct_contributors": stats.get("distinct_contributors", 0),
        "last_event_ms": stats.get("last_event_ms"),
    }
