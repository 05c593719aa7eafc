"""One client for OpenAI-compatible chat-completions endpoints, shared by synthesis and judge.

``POST {base_url}/chat/completions`` is spoken by OpenAI, vLLM, Ollama, LiteLLM and
others; this client uses plain httpx and only the parts of the protocol they all
share. Around every request:

- a timeout (httpx's, plus an overall deadline per attempt);
- retries with exponential backoff and full jitter (tenacity) on 429, 408, 5xx,
  timeouts and connection errors, waiting at least what ``Retry-After`` asks, and
  none that would start after ``max_total_s`` (a worker is not held indefinitely);
  a ``Retry-After`` longer than ``max_retry_after_s`` is not slept through: the
  call raises :class:`SynthesisUnavailable` with the hint so the worker re-queues;
- a :class:`CircuitBreaker` shared by every caller of this client;
- an :class:`asyncio.Semaphore` bounding requests in flight;
- structured output: ``response_format`` ``json_schema`` when a schema is given,
  falling back to ``json_object`` and then to none (the prompt still asks for JSON)
  when the server answers 400 to it; the fallback sticks once it has worked;
- token accounting from ``usage`` (estimated when a server sends none) and cost
  from the configured prices, into the synthesis metrics.

Nothing here logs message contents or the API key.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import structlog
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from learnloop import metrics
from learnloop.synthesis.breaker import CircuitBreaker
from learnloop.synthesis.errors import RequestRejected, SynthesisUnavailable
from processors.memory import estimate_tokens

log = structlog.get_logger(__name__)

FormatMode = Literal["json_schema", "json_object", "none"]
FORMAT_MODES: Final[tuple[FormatMode, ...]] = ("json_schema", "json_object", "none")
RETRYABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_DETAIL: Final = 200

Message = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The first choice of a chat completion, and what it cost."""

    content: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    model: str | None
    format_mode: FormatMode

    @property
    def refused(self) -> bool:
        """The model declined (``message.refusal``) or a content filter stopped it."""
        return bool(self.refusal) or self.finish_reason == "content_filter"


class RetryableError(Exception):
    """An attempt that may succeed if repeated: 429, 5xx, timeout, connection error."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _BadRequest(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^(n-1))]."""
    ceiling = min(max_s, initial_s * (2 ** max(0, attempt - 1)))
    return rng.uniform(0.0, ceiling)


def response_format(
    mode: FormatMode, name: str, schema: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The ``response_format`` request field for a mode (None: leave it out)."""
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": dict(schema)},
        }
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_ERROR_DETAIL]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:MAX_ERROR_DETAIL]
        if isinstance(error, str):
            return error[:MAX_ERROR_DETAIL]
        if "detail" in body:
            return str(body["detail"])[:MAX_ERROR_DETAIL]
    return response.text[:MAX_ERROR_DETAIL]


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and value >= 0 else 0


class ChatClient:
    """Chat completions with timeouts, retries, a breaker, a concurrency limit and accounting."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 4,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 20.0,
        max_retry_after_s: float = 60.0,
        max_total_s: float = 300.0,
        metric_label: str = "llm",
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.price_per_1k_prompt = price_per_1k_prompt
        self.price_per_1k_completion = price_per_1k_completion
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.max_total_s = max_total_s
        self.metric_label = metric_label
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset_s, clock)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._http: httpx.AsyncClient | None = None
        self._format_floor = 0  # index into FORMAT_MODES the server is known to accept
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def format_mode(self) -> FormatMode:
        """The richest structured-output mode the server is not known to reject."""
        return FORMAT_MODES[self._format_floor]

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            headers = {"content-type": "application/json", "accept": "application/json"}
            if self._api_key is not None and self._api_key.get_secret_value():
                headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=self.max_concurrency),
                headers=headers,
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        schema_name: str,
        schema: Mapping[str, Any],
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
        label: str | None = None,
    ) -> ChatReply:
        """One structured completion; retried, rate limited and accounted.

        Raises :class:`SynthesisUnavailable` (circuit open, retries exhausted, a long
        ``Retry-After``, or a request the endpoint rejects).
        """
        label = label or self.metric_label
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        if temperature is not None:  # None: leave it out (some reasoning models refuse it)
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        retrying = AsyncRetrying(
            # no attempt starts after the budget: a caller is never held much past it
            stop=stop_after_attempt(self.max_retries + 1) | stop_before_delay(self.max_total_s),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._with_fallback(body, schema_name, schema, label)
        except RetryableError as exc:
            raise SynthesisUnavailable(
                f"LLM endpoint still failing after {self.max_retries + 1} attempts ({exc.reason})",
                reason="retries_exhausted",
                retry_after_s=exc.retry_after_s,
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        delay = backoff_delay(
            state.attempt_number, self.backoff_initial_s, self.backoff_max_s, self._rng
        )
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableError) and exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        return delay

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "llm request retry",
            attempt=state.attempt_number,
            reason=getattr(exc, "reason", type(exc).__name__),
            wait_s=round(state.upcoming_sleep, 3),
        )

    async def _with_fallback(
        self, body: dict[str, Any], schema_name: str, schema: Mapping[str, Any], label: str
    ) -> ChatReply:
        last = ""
        for index in range(self._format_floor, len(FORMAT_MODES)):
            mode = FORMAT_MODES[index]
            request = dict(body)
            fmt = response_format(mode, schema_name, schema)
            if fmt is not None:
                request["response_format"] = fmt
            try:
                reply = await self._attempt(request, mode, label)
            except _BadRequest as exc:
                last = exc.detail
                log.info("llm response_format rejected, falling back", mode=mode)
                continue
            if index > self._format_floor:
                self._format_floor = index  # sticks: the server accepted this one
            return reply
        raise RequestRejected(400, last)

    async def _attempt(self, body: dict[str, Any], mode: FormatMode, label: str) -> ChatReply:
        async with self._semaphore:
            self.breaker.before()
            try:
                async with asyncio.timeout(self.timeout_s):
                    response = await self._client().post(self.url, json=body)
            except (TimeoutError, httpx.TimeoutException) as exc:
                self.breaker.failure()
                raise RetryableError("timeout") from exc
            except httpx.TransportError as exc:
                self.breaker.failure()
                raise RetryableError("connection") from exc
            except BaseException:
                self.breaker.release()
                raise
        status = response.status_code
        if status in RETRYABLE_STATUS or status >= 500:
            self.breaker.failure()
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None and retry_after > self.max_retry_after_s:
                # not worth holding a worker for: the caller re-queues and asks later
                raise SynthesisUnavailable(
                    f"LLM endpoint answered {status}, retry after {retry_after:.0f}s",
                    reason="rate_limited" if status == 429 else "retry_later",
                    retry_after_s=retry_after,
                )
            raise RetryableError(f"http_{status}", retry_after)
        if status == 400:
            self.breaker.success()  # the endpoint is up; our request is what it refused
            raise _BadRequest(_error_detail(response))
        if status >= 400:
            self.breaker.success()
            raise RequestRejected(status, _error_detail(response))
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            self.breaker.failure()
            raise RetryableError("bad_envelope") from exc
        self.breaker.success()
        content = message.get("content")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        if usage is not None:
            prompt = _as_int(usage.get("prompt_tokens"))
            completion = _as_int(usage.get("completion_tokens"))
        else:  # some servers send no usage: estimate rather than count nothing
            prompt = sum(estimate_tokens(str(m.get("content", ""))) for m in body["messages"])
            completion = estimate_tokens(content) if isinstance(content, str) and content else 0
        cost = (
            prompt / 1000 * self.price_per_1k_prompt
            + completion / 1000 * self.price_per_1k_completion
        )
        self._account(label, prompt, completion, cost)
        refusal = message.get("refusal")
        return ChatReply(
            content=content if isinstance(content, str) else None,
            refusal=refusal if isinstance(refusal, str) and refusal else None,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            model=data.get("model") if isinstance(data.get("model"), str) else None,
            format_mode=mode,
        )

    def _account(self, label: str, prompt: int, completion: int, cost: float) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost_usd += cost
        if prompt:
            metrics.SYNTHESIS_TOKENS.labels(label, "prompt").inc(prompt)
        if completion:
            metrics.SYNTHESIS_TOKENS.labels(label, "completion").inc(completion)
        if cost > 0:
            metrics.SYNTHESIS_COST.labels(label).inc(cost)
