"""``learnloop worker`` creates its topics with the configured partition counts.

Faust creates only the topics its agents read; without this the topics the worker
only writes (dead letters, results) were auto-created by the broker on first send,
with the broker's default partition count.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

pytestmark = pytest.mark.integration


async def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        return {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
    finally:
        await admin.close()


def test_worker_creates_its_topics_with_the_configured_partitions(stack_env, workers) -> None:
    stack_env["LEARNLOOP_PARTITIONS"] = "3"
    worker = workers()
    worker.wait_ready()
    partitions = {
        stack_env[f"LEARNLOOP_TOPICS__{name}"]: count
        for name, count in {
            "EVENTS": 3,
            "SIGNALS": 3,
            "TRIGGERS": 3,
            "COMMANDS": 3,
            "VERSIONS": 3,
            "DEAD_LETTERS": 1,
            "RESULTS": 1,
        }.items()
    }
    actual = asyncio.run(_partitions(stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], list(partitions)))
    assert actual == partitions
