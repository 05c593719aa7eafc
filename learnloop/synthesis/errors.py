"""Errors of the LLM synthesis layer.

:class:`SynthesisUnavailable` means "not now": the endpoint is rate limiting,
failing, unreachable, or the circuit breaker is open. The worker keeps the
trigger and asks again later; it is never a reason to drop evidence.
"""

from __future__ import annotations

from learnloop.errors import LearnloopError


class SynthesisUnavailable(LearnloopError):
    """The LLM request cannot be served now; retry the trigger later, never drop it.

    ``retry_after_s`` is a hint (from the breaker's reset time or the server's
    ``Retry-After``) of when asking again may succeed; ``reason`` is a bounded word
    (``circuit_open``, ``retries_exhausted``, ``rate_limited``, ``retry_later``,
    ``rejected``).
    """

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class CircuitOpen(SynthesisUnavailable):
    """The circuit breaker is open (or its half-open probe is in flight): fail fast."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(
            f"LLM circuit breaker open; retry in {retry_after_s:.1f}s",
            reason="circuit_open",
            retry_after_s=retry_after_s,
        )


class RequestRejected(SynthesisUnavailable):
    """The endpoint answered a 4xx other than 429 (bad key, unknown model, bad request).

    Retrying at once will not help, but the evidence is kept: a configuration fix
    and a later retry serve it.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(
            f"LLM endpoint rejected the request with HTTP {status}: {detail}",
            reason="rejected",
        )
        self.status = status
