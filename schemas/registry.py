"""A small Confluent Schema Registry client, and the Confluent wire format's framing.

The Confluent wire format is one magic byte ``00``, the 4-byte big-endian id the
registry gave the writer schema, then the Avro body (no fingerprint). Producers
register the schema under the subject ``<topic>-value`` (the registry's default
``TopicNameStrategy``) and readers fetch the writer schema by id.

Only the REST calls learnloop needs are here: register a schema under a subject
(``POST /subjects/{subject}/versions``) and get a schema by id
(``GET /schemas/ids/{id}``). Both answers are cached for the life of the client:
a schema id never changes meaning in a registry, so the cache needs no expiry.

Failures are cached too, briefly: lookups run on the worker's event loop, so an
outage must cost one timeout, not one per event. The URL may carry credentials;
they are sent as basic auth and never appear in an error message (errors become
dead-letter headers and log lines).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import structlog

CONFLUENT_MAGIC_BYTE: Final[int] = 0
CONFLUENT_HEADER_SIZE: Final[int] = 5
MAX_SCHEMA_ID: Final[int] = 2**31 - 1  # the registry's ids are Java ints
CONTENT_TYPE: Final[str] = "application/vnd.schemaregistry.v1+json"
_HEADER: Final[struct.Struct] = struct.Struct(">bI")
#: failed schema ids remembered at most, so random ids cannot grow the cache without bound
MAX_REMEMBERED_FAILURES: Final[int] = 1024

log = structlog.get_logger("learnloop.registry")


class RegistryError(Exception):
    """The registry could not answer, or answered with an error.

    ``status`` is the HTTP status (``None`` when the registry was unreachable) and
    ``error_code`` the registry's own code (e.g. 40403: schema not found).
    """

    def __init__(
        self, message: str, status: int | None = None, error_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code

    @property
    def not_found(self) -> bool:
        return self.status == 404


def subject_for_topic(topic: str) -> str:
    """The subject of a topic's value schema under the default ``TopicNameStrategy``."""
    return f"{topic}-value"


def confluent_header(schema_id: int) -> bytes:
    """The 5-byte prefix of a Confluent-framed message: magic ``00`` and the schema id."""
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} is outside 0..{MAX_SCHEMA_ID}")
    return _HEADER.pack(CONFLUENT_MAGIC_BYTE, schema_id)


def is_confluent_framed(data: bytes) -> bool:
    """Whether ``data`` starts like a Confluent-framed message (magic byte and a whole id)."""
    return len(data) >= CONFLUENT_HEADER_SIZE and data[0] == CONFLUENT_MAGIC_BYTE


def parse_confluent_header(data: bytes) -> int:
    """The schema id of a Confluent-framed message; ``ValueError`` if it is not one."""
    if len(data) < CONFLUENT_HEADER_SIZE:
        raise ValueError(f"{len(data)} bytes is shorter than the 5-byte Confluent header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != CONFLUENT_MAGIC_BYTE:
        raise ValueError(f"magic byte {magic} is not the Confluent magic byte 0")
    if schema_id > MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} is outside 0..{MAX_SCHEMA_ID}")
    return int(schema_id)


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe for logs and dead letters."""
    parts = urlsplit(url)
    if not parts.netloc:
        return "(a registry URL without a host)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


def url_credentials(url: str) -> tuple[str, str] | None:
    """The basic-auth user and password that ``url`` carries, if any."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return None
    return unquote(parts.username or ""), unquote(parts.password or "")


class SchemaRegistryClient:
    """Registers and fetches Avro schemas; thread-safe, answers cached.

    ``url`` may carry basic-auth credentials (``https://user:key@host``), or pass
    ``auth``; ``url`` the attribute is the address without them. Every network
    operation is bounded by ``timeout_s``. After a failed lookup the same schema id
    fails fast for ``retry_after_s`` (every id, when the registry was unreachable or
    answered 5xx), measured on ``clock``.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        retry_after_s: float = 10.0,
        auth: tuple[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = redact_url(url)
        self._client = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s),
            auth=auth or url_credentials(url),
            headers={"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE},
            transport=transport,
        )
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._retry_after_s = retry_after_s
        self._clock = clock
        # schema id -> (when to ask again, the failure); and the same for the whole registry
        self._failed_ids: dict[int, tuple[float, RegistryError]] = {}
        self._down: tuple[float, RegistryError] | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, subject: str, schema: str | dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id."""
        text = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
        key = (subject, text)
        with self._lock:
            cached = self._ids.get(key)
        if cached is not None:
            return cached
        self._raise_if_down(self._clock())
        answer = self._call(
            "POST", f"/subjects/{quote(subject, safe='')}/versions", {"schema": text}
        )
        schema_id = answer.get("id")
        if not isinstance(schema_id, int) or isinstance(schema_id, bool):
            raise RegistryError(f"registry answered without a schema id: {answer!r:.200}")
        with self._lock:
            self._ids[key] = schema_id
            self._by_id.setdefault(schema_id, text)
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        """The schema (JSON text) that the registry stores under ``schema_id``."""
        with self._lock:
            cached = self._by_id.get(schema_id)
            failed = self._failed_ids.get(schema_id)
        if cached is not None:
            return cached
        now = self._clock()
        if failed is not None:
            _raise_if_recent(failed, now)
        self._raise_if_down(now)
        try:
            text = self._fetch_schema(schema_id)
        except RegistryError as exc:
            self._remember_failure(schema_id, exc)
            raise
        with self._lock:
            self._by_id[schema_id] = text
            self._failed_ids.pop(schema_id, None)
        return text

    def _fetch_schema(self, schema_id: int) -> str:
        answer = self._call("GET", f"/schemas/ids/{int(schema_id)}", None)
        kind = answer.get("schemaType", "AVRO")
        if kind != "AVRO":
            raise RegistryError(f"schema {schema_id} is a {kind} schema, not Avro")
        text = answer.get("schema")
        if not isinstance(text, str):
            raise RegistryError(f"registry answered without a schema: {answer!r:.200}")
        return text

    def _remember_failure(self, schema_id: int, exc: RegistryError) -> None:
        """Let ``schema_id`` fail fast for a while: each event of that id would ask again."""
        until = self._clock() + self._retry_after_s
        with self._lock:
            if len(self._failed_ids) >= MAX_REMEMBERED_FAILURES:
                self._failed_ids.clear()
            self._failed_ids[schema_id] = (until, exc)

    def _raise_if_down(self, now: float) -> None:
        with self._lock:
            down = self._down
        if down is not None:
            _raise_if_recent(down, now)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One request; an unreachable registry or a 5xx marks the whole registry down."""
        try:
            return self._request(method, path, body)
        except RegistryError as exc:
            if exc.status is None or exc.status >= 500:
                with self._lock:
                    self._down = (self._clock() + self._retry_after_s, exc)
                log.warning(
                    "schema_registry_unavailable",
                    url=self.url,
                    status=exc.status,
                    retry_after_s=self._retry_after_s,
                )
            raise

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"schema registry {self.url} unreachable ({type(exc).__name__})"
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400 or not isinstance(answer, dict):
            code = answer.get("error_code") if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else response.text
            raise RegistryError(
                f"schema registry {self.url} answered {response.status_code} to {method} "
                f"{path}: {str(message)[:200]}",
                status=response.status_code,
                error_code=code if isinstance(code, int) else None,
            )
        return answer


def _raise_if_recent(failure: tuple[float, RegistryError], now: float) -> None:
    """Fail fast with a copy of a failure that is not yet ``retry_after_s`` old."""
    until, exc = failure
    if now < until:
        raise RegistryError(
            f"{exc} (not retried for another {until - now:.1f}s)",
            status=exc.status,
            error_code=exc.error_code,
        )
