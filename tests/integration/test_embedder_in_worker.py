"""A worker whose synthesis and consolidation embed through an OpenAI-compatible endpoint.

The endpoint is down at first: the trigger is deferred (never lost) and the rule is
learned once the endpoint answers, with every embedding request made off the
worker's event loop.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from learnloop.api.group_view import changelog_topic
from tests.conftest import read_table, wait_until
from tests.integration.streams_helpers import emit
from tests.integration.test_embeddings_endpoint import DIM, FakeEmbeddings, server, status

pytestmark = pytest.mark.integration
__all__ = ["server"]  # re-exported fixture


def test_rule_is_learned_through_the_endpoint_after_an_outage(
    stack_env: dict[str, str], workers: Any, server: FakeEmbeddings
) -> None:
    unique = uuid.uuid4().hex[:8]
    stack_env.update(
        {
            "LEARNLOOP_EMBEDDER": json.dumps(
                {
                    "kind": "openai",
                    "base_url": server.base_url,
                    "model": "embed-small",
                    "dim": DIM,
                    "max_retries": 0,
                    "timeout_s": 2,
                }
            ),
            "LEARNLOOP_TOPICS__COMMANDS": f"commands-{unique}",
            "LEARNLOOP_TOPICS__VERSIONS": f"versions-{unique}",
            "LEARNLOOP_TOPICS__RESULTS": f"results-{unique}",
        }
    )
    server.script = [status(503)]
    worker = workers()
    worker.wait_ready()
    base = {"timestamp": "2026-11-25T08:00:00Z", "user_id": "alice"}
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
    topic = changelog_topic(stack_env["LEARNLOOP_APP_ID"], "memory")

    def learned() -> list[dict[str, Any]]:
        table = read_table(stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], topic, 4)
        items = table.get("user:alice", {}).get("snapshot", {}).get("items", [])
        return [i for i in items if i["kind"] == "rule" and "v2" in i["text"]]

    [rule] = wait_until(learned, 60, 0.5)
    assert rule["status"] == "active"
    assert len(server.bodies) >= 2  # the 503 that deferred the trigger, then the answers
    assert any("v2" in text for body in server.bodies for text in body["input"])
    assert worker.metric("learnloop_synthesis_requests_total") >= 2  # deferred + ok
