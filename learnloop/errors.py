"""The one exception tree of learnloop.

Everything learnloop raises on purpose derives from :class:`LearnloopError`, so
callers can catch the product's failures without catching programming errors.

- ``ConfigError``: settings or rules files that do not validate (names the key).
- ``InvalidEvent``: an event that fails its contract (names the field and why);
  raised by producers *before* anything is sent, turned into data
  (dead letters, 4xx answers) everywhere else.
- ``BrokerError``: the Kafka-protocol broker could not be reached or started.
- ``StoreError``: the vector store failed or timed out.
"""

from __future__ import annotations


class LearnloopError(Exception):
    """Base of every error learnloop raises on purpose."""


class ConfigError(LearnloopError):
    """A setting, or a rule in the settings file, is invalid."""


class InvalidEvent(LearnloopError):
    """An event broke its contract; ``errors`` lists ``(field, reason)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in errors))


class BrokerError(LearnloopError):
    """The Kafka-protocol broker is unreachable or failed to start."""


class StoreError(LearnloopError):
    """The vector store failed or did not answer in time."""
