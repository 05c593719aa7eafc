"""Graceful shutdown: a worker commits and leaves its group; the API drains requests."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import read_group_states, wait_until
from tests.e2e.test_memory_api import ApiProcess
from tests.integration.streams_helpers import (
    actual_counts,
    emit,
    expected_counts,
    make_stream,
    missing_signals,
    signals_in_topic,
)

pytestmark = pytest.mark.e2e


def test_sigterm_worker_commits_and_leaves_its_group(stack_env, workers) -> None:
    bootstrap, topic = stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"]
    events = make_stream(400, seed=3)
    first = workers("first")
    first.wait_ready()
    emit(bootstrap, topic, events)
    wait_until(lambda: actual_counts(read_group_states(stack_env)) == expected_counts(events), 60)
    # let the knock-on work settle too (synthesis, then its control signals back to
    # aggregate): everything the first worker read, it processed and acked
    readings: list[float] = []

    def settled() -> bool:
        readings.append(first.metric("learnloop_events_in_total"))
        return len(readings) >= 3 and readings[-1] == readings[-3]

    wait_until(settled, 60, 1.0)
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(30) == 0  # a clean exit, not a kill
    # a successor takes over: the first one committed everything it had processed
    # when it stopped, so there is nothing to replay at any stage
    second = workers("second")
    second.wait_ready()
    time.sleep(3)
    assert second.metric("learnloop_events_in_total") == 0
    assert actual_counts(read_group_states(stack_env)) == expected_counts(events)


def test_sigterm_mid_stream_finishes_the_batches_in_progress_and_commits_them(
    stack_env, workers
) -> None:
    """SIGTERM while events flow: the worker stops taking records, finishes and acks
    the batches it had, commits, and exits 0; its successor reads exactly the rest."""
    bootstrap, topic = stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"]
    events = make_stream(2500, seed=11)
    first = workers("first")
    first.wait_ready()
    emit(bootstrap, topic, events)
    wait_until(lambda: first.metric("learnloop_events_in_total", stage="join") > 500, 60, 0.05)
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(60) == 0
    drained = [
        line for line in (orjson.loads(raw) for raw in first.log_path.read_bytes().splitlines()
                          if raw.startswith(b"{"))
        if line.get("event") == "worker drained"
    ]
    assert len(drained) == 1, first.log_path.read_text()[-3000:]
    assert drained[0]["drained"] is True and drained[0]["new_offsets_committed"] is not None
    done_by_first = drained[0]["processed"]["join"]
    assert 0 < done_by_first < len(events), "the signal must arrive mid-stream"
    # what it processed is exactly what it committed: the events topic's partitions
    # start at offset 0, so the committed offsets add up to the events behind them
    committed = asyncio.run(_committed(
        bootstrap, stack_env["LEARNLOOP_APP_ID"], topic, int(stack_env["LEARNLOOP_PARTITIONS"])))
    assert sum(offset or 0 for offset in committed.values()) == done_by_first, committed
    second = workers("second")
    second.wait_ready()
    expected = expected_counts(events)
    seen: dict[str, Any] = {}

    def caught_up() -> bool:
        seen["join"] = second.metric("learnloop_events_in_total", stage="join")
        seen["counts"] = actual_counts(read_group_states(stack_env))
        return bool(seen["counts"] == expected)

    try:
        wait_until(caught_up, 180, 1.0)
    except AssertionError:
        wrong = {g: (seen["counts"].get(g), c) for g, c in expected.items()
                 if seen["counts"].get(g) != c}
        detail = (
            f"successor read {seen['join']} join events after {done_by_first}; "
            f"{len(wrong)} groups differ (actual, expected), e.g. {list(wrong.items())[:3]}; "
            f"on the signals topic: {signals_in_topic(stack_env, set(list(wrong)[:3]))}; "
            f"missing for org:acme: {missing_signals(stack_env, events, 'org:acme')}"
        )
        raise AssertionError(detail) from None
    # the successor started where the first one stopped (it may read a few of its own
    # events twice after its own rebalance, which the counts above show is harmless)
    assert second.metric("learnloop_events_in_total", stage="join") >= len(events) - done_by_first


async def _committed(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int | None]:
    """The consumer group's committed offset per partition of ``topic`` (without joining)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


def test_sigterm_api_drains_in_flight_requests(stack_env, tmp_path) -> None:
    """A change request waits for its outcome (no worker here: up to 10 s, then 'pending');
    SIGTERM arrives meanwhile, and the request still gets its answer."""
    keys = {"ops": {"key": "drain-key-0123456789", "scopes": ["admin"], "tenant": "*"}}
    env = {**stack_env, "LEARNLOOP_API_KEYS": orjson.dumps(keys).decode()}
    for name in ("commands", "versions", "results"):
        env[f"LEARNLOOP_TOPICS__{name.upper()}"] = f"{name}-{tmp_path.name}"
    api = ApiProcess(env, tmp_path / "api.log").start()
    # make the group known to the API's versions log so the command is accepted

    from aiokafka import AIOKafkaProducer

    async def seed() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=env["LEARNLOOP_KAFKA_BOOTSTRAP"])
        await producer.start()
        snapshot = {
            "group": "user:z",
            "version": 1,
            "parent": None,
            "reason": "seed",
            "created_ms": 0,
            "items": [],
        }
        await producer.send_and_wait(
            env["LEARNLOOP_TOPICS__VERSIONS"], orjson.dumps(snapshot), key=b"user:z#0000000001"
        )
        await producer.stop()

    asyncio.run(seed())
    headers = {"authorization": "Bearer drain-key-0123456789"}
    wait_until(
        lambda: (
            httpx.get(f"{api.url}/v1/groups/user:z/memory", headers=headers, timeout=5).status_code
            == 200
        ),
        30,
    )
    answers: list[Any] = []

    def slow_request() -> None:
        answers.append(httpx.post(f"{api.url}/v1/groups/user:z/reset", headers=headers, timeout=30))

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1.0)
    assert api.process is not None
    api.process.send_signal(signal.SIGTERM)
    thread.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["outcome"] == "pending"
    assert api.process.wait(30) == 0
