"""Embeddings from any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

OpenAI, vLLM, Ollama, LiteLLM, text-embeddings-inference and others speak it.
Around every request: an httpx timeout; retries with exponential backoff and full
jitter (tenacity) on 408, 429, 5xx, timeouts and connection errors, at least what
``Retry-After`` asks; inputs batched; each distinct text embedded once (an LRU
cache), so consolidating a group whose items did not change costs no request.
After the retries, :class:`EmbeddingUnavailable` says "not now": the worker defers
the trigger that needed it. Vectors are returned at unit length.

``embed`` is synchronous like every :class:`~processors.embedding.Embedder`, so the
worker and the API call it in a thread (``blocking = True``), never on the loop.
"""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from learnloop.embeddings.errors import EmbeddingUnavailable
from learnloop.synthesis.client import parse_retry_after

log = structlog.get_logger(__name__)
RETRYABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
PROBE_TEXT: Final = "dimension probe"


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [float(x) / norm for x in vector] if norm else [0.0] * len(vector)


class OpenAIEmbedder:
    """A remote embedder with timeouts, retries, batching and a cache."""

    blocking = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        *,
        dim: int | None = None,
        dimensions: int | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        batch_size: int = 64,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        cache_size: int = 8192,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.dimensions = dimensions  # asked of the server (models that can shorten vectors)
        self._dim = dim or dimensions
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.cache_size = cache_size
        self.requests = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()  # called from worker threads
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key is not None and api_key.get_secret_value():
            headers["authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    @property
    def url(self) -> str:
        return f"{self.base_url}/embeddings"

    @property
    def dim(self) -> int:
        """The vector size: configured, or learned from one probe request."""
        if self._dim is None:
            self._dim = len(self.embed([PROBE_TEXT])[0])
        return self._dim

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors in input order; raises :class:`EmbeddingUnavailable`."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            vectors = self._request(batch)
            with self._lock:
                if self._dim is None:
                    self._dim = len(vectors[0])  # learned from the first answer
                for text, vector in zip(batch, vectors, strict=True):
                    self._cache[text] = vector
                    self._cache.move_to_end(text)
                while len(self._cache) > max(self.cache_size, len(texts)):
                    self._cache.popitem(last=False)
        with self._lock:
            return [list(self._cache[t]) for t in texts]

    def _request(self, batch: list[str]) -> list[list[float]]:
        body: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions:
            body["dimensions"] = self.dimensions
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(body, len(batch))
        except _Retryable as exc:
            raise EmbeddingUnavailable(
                f"embeddings endpoint unavailable after {self.max_retries + 1} attempt(s): "
                f"{exc.reason}",
                retry_after_s=exc.retry_after_s,
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (state.attempt_number - 1))
        delay = self._rng.uniform(0.0, ceiling)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after_s", None)
        return max(delay, hint) if hint else delay

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "embeddings request failed, retrying",
            attempt=state.attempt_number,
            reason=getattr(exc, "reason", type(exc).__name__),
        )

    def _attempt(self, body: dict[str, Any], expected: int) -> list[list[float]]:
        self.requests += 1
        try:
            response = self._http.post(self.url, json=body)
        except httpx.TimeoutException:
            raise _Retryable("timeout") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection: {type(exc).__name__}") from None
        if response.status_code in RETRYABLE_STATUS:
            hint = parse_retry_after(response.headers.get("retry-after"))
            raise _Retryable(f"HTTP {response.status_code}", hint)
        if response.status_code >= 400:
            raise EmbeddingUnavailable(
                f"embeddings endpoint rejected the request with HTTP {response.status_code}"
            )
        try:
            data = response.json()["data"]
            rows = sorted(data, key=lambda row: int(row["index"]))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retryable(f"malformed response: {type(exc).__name__}") from None
        if len(vectors) != expected or len({len(v) for v in vectors}) > 1 or not vectors[0]:
            raise _Retryable("malformed response: wrong number or size of vectors")
        if self._dim is not None and len(vectors[0]) != self._dim:
            raise EmbeddingUnavailable(
                f"embeddings endpoint returned {len(vectors[0])} dimensions, expected {self._dim}"
            )
        return [_unit(v) for v in vectors]
