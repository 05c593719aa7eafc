"""The LLM synthesizer inside a real worker: an outage defers the trigger, never loses it."""

from __future__ import annotations

import json
import uuid

import pytest

from learnloop.api.group_view import changelog_topic
from tests.conftest import read_table, wait_until
from tests.integration.streams_helpers import emit
from tests.integration.test_llm_synthesizer import (  # the loopback chat-completions server
    MODEL,
    FakeLLM,
    ids_where,
    llm_server,
    reply_rules,
    reply_status,
)

pytestmark = pytest.mark.integration
__all__ = ["llm_server"]  # re-exported fixture
RULE = "Use the v2 API instead of v1."


def _rule(body: dict) -> list[dict]:
    return [
        {
            "kind": "rule",
            "text": RULE,
            "supporting_event_ids": ids_where(body, "v2"),
            "rationale": "the user asked for v2",
        }
    ]


def test_outage_defers_the_trigger_and_the_rule_arrives_later(
    stack_env, workers, llm_server: FakeLLM
) -> None:
    env = {
        **stack_env,
        "LEARNLOOP_SYNTHESIZER": "llm",
        "LEARNLOOP_LLM": json.dumps(
            {
                "base_url": llm_server.base_url,
                "model": MODEL,
                "max_retries": 0,
                "breaker_threshold": 10,
                "timeout_s": 2,
                "max_total_s": 5,
            }
        ),
        "LEARNLOOP_TOPICS__TRIGGERS": f"triggers-{uuid.uuid4().hex[:8]}",
        "LEARNLOOP_TOPICS__COMMANDS": f"commands-{uuid.uuid4().hex[:8]}",
        "LEARNLOOP_TOPICS__VERSIONS": f"versions-{uuid.uuid4().hex[:8]}",
        "LEARNLOOP_TOPICS__RESULTS": f"results-{uuid.uuid4().hex[:8]}",
    }
    stack_env.update(env)
    llm_server.script = [reply_status(503), reply_status(503)]
    llm_server.default = reply_rules(_rule)
    worker = workers()
    worker.wait_ready()
    emit(
        env["LEARNLOOP_KAFKA_BOOTSTRAP"],
        env["LEARNLOOP_TOPICS__EVENTS"],
        [
            {
                "event_id": "i1",
                "type": "interaction",
                "timestamp": "2026-11-25T08:00:00Z",
                "user_id": "alice",
                "query": "how do I call billing?",
                "response": "use v1",
            },
            {
                "event_id": "x1",
                "type": "explanation",
                "timestamp": "2026-11-25T08:00:01Z",
                "user_id": "alice",
                "interaction_id": "i1",
                "text": "that's wrong, you should have used the v2 API",
            },
        ],
    )
    topic = changelog_topic(env["LEARNLOOP_APP_ID"], "memory")

    def learned() -> bool:
        table = read_table(env["LEARNLOOP_KAFKA_BOOTSTRAP"], topic, 4)
        items = table.get("user:alice", {}).get("snapshot", {}).get("items", [])
        return any(
            i["text"] == RULE and i["provenance"]["synthesizer"] == f"llm:{MODEL}" for i in items
        )

    wait_until(learned, 60, 0.5)
    assert llm_server.requests >= 3  # two failures, then the answer that was used
    assert worker.metric("learnloop_synthesis_requests_total") >= 1
