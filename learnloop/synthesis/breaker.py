"""A circuit breaker for one LLM endpoint: closed -> open -> half-open -> closed.

Closed: requests go through; each failed attempt (429, 5xx, timeout, connection
error) counts, a success resets the count. After ``threshold`` consecutive
failures the breaker opens: every request fails fast with :class:`CircuitOpen`
for ``reset_s`` seconds, so a broken endpoint is not hammered and the worker's
triggers wait instead of piling up retries. Then it is half-open: one probe
request is let through (others still fail fast); its success closes the
breaker, its failure opens it again for another ``reset_s``.

Single event loop, no awaits inside: the state changes are atomic with respect to
other tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import structlog

from learnloop.synthesis.errors import CircuitOpen

log = structlog.get_logger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive failures of one endpoint and fails fast while it is open."""

    def __init__(
        self, threshold: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1:
            raise ValueError("breaker threshold must be at least 1")
        if reset_s <= 0:
            raise ValueError("breaker reset time must be positive")
        self.threshold = threshold
        self.reset_s = reset_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state as of now (an open breaker whose time is up reads as half-open)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def before(self) -> None:
        """Call before an attempt: raises :class:`CircuitOpen` when it must not be made."""
        if self._state == "open":
            remaining = self.reset_s - (self._clock() - self._opened_at)
            if remaining > 0:
                raise CircuitOpen(remaining)
            self._state = "half_open"
            self._probe_in_flight = False
            log.info("llm circuit half-open", reset_s=self.reset_s)
        if self._state == "half_open":
            if self._probe_in_flight:
                raise CircuitOpen(self.reset_s)
            self._probe_in_flight = True

    def success(self) -> None:
        """The endpoint answered: close the breaker and forget past failures."""
        if self._state != "closed":
            log.info("llm circuit closed")
        self._state = "closed"
        self._failures = 0
        self._probe_in_flight = False

    def failure(self) -> None:
        """An attempt failed: open the breaker at the threshold, or when the probe failed."""
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.threshold:
            if self._state != "open":
                log.warning("llm circuit open", failures=self._failures, reset_s=self.reset_s)
            self._state = "open"
            self._opened_at = self._clock()
            self._probe_in_flight = False

    def release(self) -> None:
        """An attempt ended without a verdict (cancelled): let another probe through."""
        self._probe_in_flight = False
