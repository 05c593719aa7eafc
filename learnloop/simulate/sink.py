"""Where simulated events go: a JSONL file, Kafka, or ``POST /v1/events``.

Both live sinks go through the public interfaces a real service would use: the
Python producer client (validates, keys by interaction id, confirms every
batch) or the HTTP API (which answers which events it accepted).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

import httpx

from learnloop.errors import BrokerError, InvalidEvent
from learnloop.producer import EventProducer


class Sink(Protocol):
    async def __aenter__(self) -> Sink: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, events: Sequence[dict[str, Any]]) -> int:
        """Send a batch; return how many the other side accepted."""
        ...


class KafkaSink:
    """Through :class:`~learnloop.producer.EventProducer` to the events topic."""

    def __init__(self, bootstrap: str, topic: str = "learnloop.events") -> None:
        self.producer = EventProducer(bootstrap, topic)

    async def __aenter__(self) -> KafkaSink:
        await self.producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.producer.stop()

    async def send(self, events: Sequence[dict[str, Any]]) -> int:
        return len(await self.producer.emit_many(events))


class HttpSink:
    """``POST /v1/events`` with a JSON array per batch; rejected events raise."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )

    async def __aenter__(self) -> HttpSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.aclose()

    async def send(self, events: Sequence[dict[str, Any]]) -> int:
        try:
            response = await self.client.post("/v1/events", json=list(events))
        except httpx.HTTPError as exc:
            raise BrokerError(f"POST /v1/events failed: {type(exc).__name__}: {exc}") from None
        if response.status_code != 202:
            raise BrokerError(f"POST /v1/events answered {response.status_code}: {response.text}")
        body = response.json()
        if body["rejected"]:
            first = body["rejected"][0]
            raise InvalidEvent([(e["field"], e["reason"]) for e in first["errors"]])
        return int(body["accepted"])
