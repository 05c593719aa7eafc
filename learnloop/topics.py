"""Creating learnloop's topics before any producer or worker needs them."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from learnloop.errors import BrokerError
from learnloop.settings import Settings


async def ensure_topics(bootstrap: str, settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the input, internal and dead-letter topics if they are missing."""
    names = settings.topics
    wanted = {
        names.events: settings.partitions,
        names.signals: settings.partitions,
        names.triggers: settings.partitions,
        names.dead_letters: 1,
        names.commands: settings.partitions,
        names.versions: settings.partitions,
        names.results: 1,
    }
    if settings.judge_enabled:
        wanted[names.judge_requests] = settings.partitions
    compacted = {names.versions}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name,
                    partitions,
                    settings.replication_factor,
                    topic_configs={"cleanup.policy": "compact"} if name in compacted else None,
                )
                for name, partitions in wanted.items()
                if name not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another process won
                    await admin.create_topics(missing)
    except TimeoutError:
        raise BrokerError(f"could not create topics on {bootstrap} within {timeout_s} s") from None
    finally:
        await admin.close()
