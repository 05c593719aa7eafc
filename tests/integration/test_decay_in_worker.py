"""Decay on a timer in a real worker: a rule nobody supports any more fades and retires.

No new synthesis happens after the rule is learned; each decay step is still a new
memory version (reason ``decay``) written by the group's owner through the command
path, until the rule is retired.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import read_table, wait_until
from tests.integration.streams_helpers import emit

pytestmark = pytest.mark.integration


def test_unsupported_rule_decays_in_versions_and_retires(
    stack_env: dict[str, str], workers: Any
) -> None:
    unique = uuid.uuid4().hex[:8]
    stack_env.update(
        {
            "LEARNLOOP_DECAY_INTERVAL_S": "1",
            "LEARNLOOP_DECAY_HALF_LIFE_S": "3",
            "LEARNLOOP_TOPICS__COMMANDS": f"commands-{unique}",
            "LEARNLOOP_TOPICS__VERSIONS": f"versions-{unique}",
            "LEARNLOOP_TOPICS__RESULTS": f"results-{unique}",
        }
    )
    worker = workers()
    worker.wait_ready()
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    base = {"timestamp": now, "user_id": "alice"}
    emit(
        stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"],
        stack_env["LEARNLOOP_TOPICS__EVENTS"],
        [
            {
                **base,
                "event_id": "i1",
                "type": "interaction",
                "query": "how do I call billing?",
                "response": "use v1",
            },
            {
                **base,
                "event_id": "x1",
                "type": "explanation",
                "interaction_id": "i1",
                "text": "that's wrong, you should have used the v2 API",
            },
        ],
    )

    def versions() -> list[dict[str, Any]]:
        table = read_table(
            stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__VERSIONS"], 4
        )
        return sorted(
            (v for v in table.values() if v["group"] == "user:alice"), key=lambda v: v["version"]
        )

    def retired() -> list[dict[str, Any]] | None:
        found = versions()
        last = found[-1]["items"] if found else []
        return found if last and all(i["status"] == "retired" for i in last) else None

    history = wait_until(retired, 90, 1.0)
    reasons = [v["reason"] for v in history]
    assert reasons[0].startswith("synthesis:")
    assert set(reasons[1:]) == {"decay"} and len(reasons) >= 3
    assert [v["version"] for v in history] == list(range(1, len(history) + 1))
    strengths = [v["items"][0]["strength"] for v in history]
    assert strengths == sorted(strengths, reverse=True) and strengths[-1] < 0.25
    assert "without new support" in history[-1]["items"][0]["note"]
    # no further versions once everything is retired
    settled = len(history)
    asyncio.run(asyncio.sleep(3))
    assert len(versions()) == settled
