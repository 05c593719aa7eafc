"""The LLM judge inside a real worker on the embedded broker, against a loopback LLM.

An interaction nobody gave feedback on is judged once its feedback window closes;
one that got a person's rating is not. The first call fails (503): the request is
deferred, not lost, and the derived rating arrives later as a normal rating event
(``judge:<interaction id>``, marked derived) that aggregation counts as derived.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.responses import Response

from learnloop.api.group_view import changelog_topic
from schemas import EventCodec
from tests.conftest import read_group_states, read_table, wait_until
from tests.integration.streams_helpers import emit
from tests.integration.test_llm_synthesizer import (  # the loopback chat-completions server
    MODEL,
    FakeLLM,
    completion,
    hang,
    llm_server,
    reply_status,
)

pytestmark = pytest.mark.integration
__all__ = ["llm_server"]  # re-exported fixture


async def _events(bootstrap: str, topic: str, partitions: int) -> list[dict[str, Any]]:
    codec = EventCodec()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        found: list[dict[str, Any]] = []
        empty = 0
        while empty < 3:
            batch = await consumer.getmany(timeout_ms=200)
            if not any(batch.values()):
                empty += 1
                continue
            empty = 0
            for records in batch.values():
                found += [dict(codec.decode(r.value)) for r in records]
        return found
    finally:
        await consumer.stop()


async def _all_good(body: dict[str, Any]) -> Response:
    ids = re.findall(r'"id":"(I\d+)"', body["messages"][1]["content"])
    verdicts = [{"id": i, "verdict": "good", "confidence": 0.9, "reason": "fine"} for i in ids]
    return completion(json.dumps({"verdicts": verdicts}))


def _judge_env(llm_server: FakeLLM) -> dict[str, str]:
    unique = uuid.uuid4().hex[:8]
    return {
        "LEARNLOOP_LLM": json.dumps(
            {
                "base_url": llm_server.base_url,
                "model": MODEL,
                "max_retries": 0,
                "breaker_threshold": 10,
                "timeout_s": 1,
                "max_total_s": 5,
            }
        ),
        "LEARNLOOP_JUDGE__SAMPLE_RATE": "1",
        "LEARNLOOP_JUDGE__AFTER_S": "1",
        "LEARNLOOP_JUDGE__TIMEOUT_S": "3",
        "LEARNLOOP_JUDGE__MAX_RETRY_DELAY_S": "2",
        "LEARNLOOP_TOPICS__JUDGE_REQUESTS": f"judge-{unique}",
        "LEARNLOOP_TOPICS__COMMANDS": f"commands-{unique}",
        "LEARNLOOP_TOPICS__VERSIONS": f"versions-{unique}",
        "LEARNLOOP_TOPICS__RESULTS": f"results-{unique}",
    }


def _deferred(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    wanted = 'learnloop_synthesis_requests_total{outcome="deferred",synthesizer="llm_judge"}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)
    )


def test_a_hanging_judge_holds_up_nothing_and_loses_nothing(
    stack_env: dict[str, str], workers: Any, llm_server: FakeLLM
) -> None:
    stack_env.update(_judge_env(llm_server))
    llm_server.default = hang(30)  # every judge call times out
    worker = workers()
    worker.wait_ready()
    base = {"timestamp": "2026-11-25T08:00:00Z", "team_id": "search"}
    bootstrap, topic = stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"]
    emit(
        bootstrap,
        topic,
        [
            {
                **base,
                "user_id": "alice",
                "event_id": "i1",
                "type": "interaction",
                "query": "q",
                "response": "an answer nobody rated",
            },
        ],
    )
    wait_until(lambda: _deferred(worker.port) >= 2, 60, 0.5)  # the judge keeps failing
    emit(
        bootstrap,
        topic,
        [
            {
                **base,
                "user_id": "bob",
                "event_id": "i2",
                "type": "interaction",
                "query": "how do I call billing?",
                "response": "use v1",
            },
            {
                **base,
                "user_id": "bob",
                "event_id": "x2",
                "type": "explanation",
                "interaction_id": "i2",
                "text": "that's wrong, you should have used the v2 API",
            },
        ],
    )
    memory = changelog_topic(stack_env["LEARNLOOP_APP_ID"], "memory")

    def learned() -> bool:
        table = read_table(bootstrap, memory, 4)
        items = table.get("user:bob", {}).get("snapshot", {}).get("items", [])
        return any("v2" in i["text"] for i in items)

    wait_until(learned, 30, 0.5)  # learning goes on while every judge call hangs
    llm_server.default = _all_good  # the endpoint recovers: the request was kept

    def judged() -> bool:
        state = read_group_states(stack_env).get("user:alice") or {}
        return state.get("derived_up") == 1

    wait_until(judged, 60, 0.5)
    events = asyncio.run(_events(bootstrap, topic, 4))
    assert [e["event_id"] for e in events if e["event_id"].startswith("judge:")] == ["judge:i1"]


def test_unrated_interaction_is_judged_after_an_outage_rated_one_is_not(
    stack_env: dict[str, str], workers: Any, llm_server: FakeLLM
) -> None:
    env = _judge_env(llm_server)
    stack_env.update(env)
    llm_server.script = [reply_status(503)]
    llm_server.default = _all_good
    worker = workers()
    worker.wait_ready()
    base = {"timestamp": "2026-11-25T08:00:00Z", "user_id": "alice", "team_id": "search"}
    emit(
        stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"],
        stack_env["LEARNLOOP_TOPICS__EVENTS"],
        [
            {
                **base,
                "event_id": "i1",
                "type": "interaction",
                "query": "q one",
                "response": "the unrated answer",
            },
            {
                **base,
                "event_id": "i2",
                "type": "interaction",
                "query": "q two",
                "response": "the rated answer",
            },
            {**base, "event_id": "r2", "type": "rating", "interaction_id": "i2", "value": -1},
        ],
    )

    def judged() -> dict[str, Any] | None:
        state = read_group_states(stack_env).get("user:alice")
        return state if state and state["counts"].get("rating") == 2 else None

    state = wait_until(judged, 90, 0.5)
    sent = [b["messages"][1]["content"] for b in llm_server.bodies]
    assert len(sent) >= 2  # the 503, then the call that was served
    assert all("the unrated answer" in s for s in sent)
    assert not any("the rated answer" in s for s in sent)
    assert state["counts"]["interaction"] == 2
    assert state["up"] == 0 and state["down"] == 1  # people's counts: only r2
    assert state["derived_up"] == 1  # the judge's, counted apart
    events = asyncio.run(
        _events(stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"], 4)
    )
    derived = [e for e in events if e["event_id"].startswith("judge:")]
    assert [e["event_id"] for e in derived] == ["judge:i1"]
    assert derived[0]["metadata"]["derived_by"] == "llm_judge"
    assert derived[0]["rating"]["value"] == 1
    assert worker.metric("learnloop_synthesis_requests_total") >= 2  # deferred + ok
