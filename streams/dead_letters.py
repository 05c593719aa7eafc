"""Dead letters: the input bytes plus headers that say why, from where and when."""

from __future__ import annotations

from typing import Any

import orjson

from learnloop import metrics
from streams.outputs import Outgoing, now_ms

#: Dead letters keep at most this much of the original value: a message the worker
#: rejected for its size must not be rejected again by the producer (1 MB default).
MAX_DEAD_LETTER_VALUE = 512 * 1024


def dead_letter(
    app: object,
    reason: str,
    detail: str,
    *,
    value: bytes | None,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    errors: list[tuple[str, str]] | None = None,
) -> Outgoing:
    """A record for the dead-letter topic; ``detail`` names the field where known."""
    metrics.DEAD_LETTERS.labels(reason).inc()
    headers = [
        ("learnloop.reason", reason.encode()),
        ("learnloop.detail", detail.encode("utf-8", "replace")[:1000]),
        ("learnloop.source", f"{topic}/{partition}/{offset}".encode()),
        ("learnloop.dead_lettered_ms", str(now_ms()).encode()),
    ]
    if errors:
        headers.append(("learnloop.errors", orjson.dumps([list(e) for e in errors])[:2000]))
    body = value if value is not None else b""
    if len(body) > MAX_DEAD_LETTER_VALUE:
        headers.append(("learnloop.original_bytes", str(len(body)).encode()))
        headers.append(("learnloop.truncated", b"true"))
        body = body[:MAX_DEAD_LETTER_VALUE]
    return Outgoing(
        topic=app.dead_letter_topic,  # type: ignore[attr-defined]
        key=key[:1024] if key else key,
        value=body,
        headers=headers,
    )


def rejected(
    app: object,
    message: Any,
    reason: str,
    detail: str,
    errors: list[tuple[str, str]] | None = None,
    *,
    value: bytes | None = None,
) -> Outgoing:
    """A dead letter for a consumed Kafka message and where it came from: the message
    as it came, or ``value`` (one bad part of it, such as a signal in a bundle)."""
    return dead_letter(
        app,
        reason,
        detail,
        value=message.value if value is None else value,
        key=message.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        errors=errors,
    )
