"""Errors as HTTP answers: a code, a message, and the fields at fault; never a trace."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)


class Problem(Exception):
    """An error answer: ``status``, a stable ``code`` and a human ``message``."""

    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


def _body(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": code, "message": message}
    if errors:
        out["errors"] = errors
    return out


def install(app: FastAPI) -> None:
    """Register handlers so every failure is a small JSON answer."""

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> ORJSONResponse:
        return ORJSONResponse(_body(exc.code, exc.message, exc.errors), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> ORJSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": e["msg"]}
            for e in exc.errors()
        ]
        return ORJSONResponse(
            _body("invalid_request", "the request does not validate", errors), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        return ORJSONResponse(_body("http_error", str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> ORJSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return ORJSONResponse(
            _body("internal_error", "the server failed; see its logs"), status_code=500
        )
