"""Reading request bodies with a size limit, before any parsing."""

from __future__ import annotations

from fastapi import Request

from learnloop.api.problems import Problem


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, or a 413 problem as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "body_too_large", f"body is {declared} bytes, limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
