"""``create_api(settings, services)``: the FastAPI app of ``learnloop api`` and ``up``.

The app holds no global state: its producer, group view and store come in a
:class:`Services` object that the process builds and closes in the lifespan.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, ORJSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from learnloop import metrics
from learnloop.api import problems
from learnloop.api.body import read_limited
from learnloop.api.group_view import GroupView
from learnloop.api.problems import Problem
from learnloop.errors import BrokerError
from learnloop.producer import EventProducer
from learnloop.settings import Settings
from learnloop.store.port import VectorStore
from schemas import from_json_event

log = structlog.get_logger(__name__)
JSON_TYPES = ("application/json", "application/x-ndjson")


@dataclass(slots=True)
class Services:
    """What the API talks to; started and stopped by the lifespan."""

    producer: EventProducer
    groups: GroupView
    store: VectorStore

    async def start(self) -> None:
        await self.producer.start()
        await self.groups.start()

    async def stop(self) -> None:
        await self.groups.stop()
        await self.producer.stop()
        await self.store.close()


def create_api(settings: Settings, services: Services) -> FastAPI:
    """The HTTP API; see the brief for the public contract of each route."""

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
    )
    problems.install(app)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.API_REQUESTS.labels(template, str(response.status_code)).inc()
        metrics.API_LATENCY.labels(template).observe(time.perf_counter() - started)
        return response

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
            "store": await services.store.ping(),
        }
        ready = all(checks.values())
        return ORJSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/events", status_code=202, tags=["ingest"])
    async def post_events(request: Request) -> ORJSONResponse:
        """Accept one event or a JSON array; publish the valid ones, name each rejected field."""
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
        q: str = Query(default="", max_length=200, description="substring filter"),
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """Groups with state, sorted by id, paginated."""
        names = [g for g in services.groups.groups() if q in g]
        page = names[offset : offset + limit]
        return {
            "total": len(names),
            "groups": [_summary(services.groups.stats(g)) for g in page],
        }

    @app.get("/v1/groups/{group}/stats", tags=["memory"])
    async def group_stats(group: str) -> dict[str, Any]:
        """The group's aggregates: counts by signal kind, contributors, last synthesis."""
        stats = services.groups.stats(group)
        if stats is None:
            raise Problem(404, "unknown_group", f"no state for group {group!r}")
        return stats

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("learnloop.web").joinpath("index.html").read_text()
        return HTMLResponse(html)

    return app


def _summary(stats: dict[str, Any] | None) -> dict[str, Any]:
    assert stats is not None
    return {
        "group": stats["group"],
        "scope": stats["scope"],
        "events": stats["events"],
        "distinct_contributors": stats["distinct_contributors"],
        "memory_version": stats["memory_version"],
        "last_event_ms": stats["last_event_ms"],
    }
