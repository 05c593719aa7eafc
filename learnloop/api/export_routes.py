"""``POST /v1/groups/{group}/export``: the fine-tuning export of ``learnloop export`` over HTTP.

An export reads the whole events topic, so it is an admin action, limited to a few
at a time per API process, and answered only once the file is complete: the
client gets a whole JSONL file or an error, never half a dataset. The summary
(rows by source, what was left out and why) travels in ``X-Export-Summary``.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Final

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.responses import FileResponse

from learnloop.api.auth import CallerDep
from learnloop.api.problems import Problem
from learnloop.errors import LearnloopError
from learnloop.export import ExportError, Format, Layout, export_to_tempfile, parse_time_ms
from learnloop.settings import Settings

if TYPE_CHECKING:
    from learnloop.api.app import Services

#: exports running at once in one API process; each reads the events topic end to end
CONCURRENT_EXPORTS: Final = 2


class ExportRequest(BaseModel):
    """What to export; times are ISO 8601 or epoch milliseconds, as on the command line."""

    model_config = ConfigDict(extra="forbid")

    format: Format
    layout: Layout = "messages"
    since: str | None = Field(default=None, max_length=64)
    until: str | None = Field(default=None, max_length=64)
    min_agreement: float = Field(default=0.0, ge=0.0, le=1.0)


def build_export_router(settings: Settings, services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1")
    slots = asyncio.Semaphore(CONCURRENT_EXPORTS)

    @router.post("/groups/{group}/export", tags=["export"], response_class=FileResponse)
    async def export_group(group: str, body: ExportRequest, who: CallerDep) -> FileResponse:
        """The group's feedback as SFT, DPO or KTO JSONL (see docs/EXPORT.md); admin only."""
        who.require("admin")
        stats = services.groups.stats(group)
        owner = stats.get("org") if stats else None
        who.check_group(group, owner)
        if slots.locked():
            raise Problem(429, "too_many_exports", "exports are running; try again shortly")
        try:
            since_ms = parse_time_ms(body.since) if body.since is not None else None
            until_ms = parse_time_ms(body.until) if body.until is not None else None
        except ExportError as exc:
            raise Problem(422, "invalid_request", str(exc)) from None
        async with slots:
            try:
                path, summary = await export_to_tempfile(
                    settings,
                    services.bootstrap,
                    group,
                    body.format,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    min_agreement=body.min_agreement,
                    layout=body.layout,
                    owner=owner,
                )
            except ExportError as exc:
                raise Problem(422, "invalid_request", str(exc)) from None
            except (LearnloopError, TimeoutError) as exc:
                raise Problem(503, "broker_unavailable", str(exc) or "timed out") from None
        return FileResponse(
            path,
            media_type="application/x-ndjson",
            filename=f"{group.replace(':', '-')}-{body.format}.jsonl",
            headers={"X-Export-Summary": json.dumps(summary.as_dict())},  # ASCII-safe
            background=BackgroundTask(path.unlink, missing_ok=True),
        )

    return router
