"""The event codec a process uses, built from its settings."""

from __future__ import annotations

from learnloop.settings import Settings
from schemas import EventCodec, Limits
from schemas.registry import SchemaRegistryClient


def make_codec(settings: Settings) -> EventCodec:
    """Avro single-object encoding by default; Confluent framing with a registry URL.

    Either way the decoder reads every encoding it knows, so producers can move
    from one to the other without stopping the workers.
    """
    limits = Limits(
        max_text_chars=settings.max_text_chars, max_event_bytes=settings.max_event_bytes
    )
    if settings.schema_registry_url is None:
        return EventCodec(limits)
    registry = SchemaRegistryClient(
        settings.schema_registry_url.get_secret_value(),
        timeout_s=settings.schema_registry_timeout_s,
        retry_after_s=settings.schema_registry_retry_s,
    )
    return EventCodec(limits, registry=registry, subject=f"{settings.topics.events}-value")
