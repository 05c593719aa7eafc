"""Shared fixtures: the real embedded broker, started once per session on a free port.

Each test gets its own topics, app id (so its own consumer group and changelog
topics) and data directory, so tests never see each other's events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from learnloop.api.group_view import _table_key, changelog_topic
from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.settings import TopicNames


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    embedded = EmbeddedBroker(log_file=log).start()
    try:
        yield embedded
    finally:
        embedded.stop()


def unique_env(broker: EmbeddedBroker, data_dir: Path, **extra: str) -> dict[str, str]:
    """LEARNLOOP_* variables for the processes of one test or module.

    Its own app id (so its own consumer group and changelogs) and every topic of
    :class:`TopicNames` its own, so no test sees another's events, commands or
    versions. ``extra`` adds or overrides variables.
    """
    unique = uuid.uuid4().hex[:10]
    return {
        "LEARNLOOP_KAFKA_BOOTSTRAP": broker.bootstrap,
        "LEARNLOOP_BROKER_TRUE_END_OFFSETS": "true",
        "LEARNLOOP_APP_ID": f"ll-{unique}",
        **{
            f"LEARNLOOP_TOPICS__{name.upper()}": f"{name.replace('_', '-')}-{unique}"
            for name in TopicNames.model_fields
        },
        "LEARNLOOP_DATA_DIR": str(data_dir),
        "LEARNLOOP_LOG_FORMAT": "json",
        "LEARNLOOP_JOIN_WAIT_S": "2",
        "LEARNLOOP_PARTITIONS": "4",
        **extra,
    }


@pytest.fixture
def stack_env(broker: EmbeddedBroker, tmp_path: Path) -> dict[str, str]:
    """LEARNLOOP_* variables for processes of one test: unique topics and app id."""
    return unique_env(broker, tmp_path / "data")


class WorkerProcess:
    """A ``learnloop worker`` child process, as a platform would run it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> WorkerProcess:
        self.port = free_port()
        self.env["LEARNLOOP_WORKER_WEB_PORT"] = str(self.port)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "learnloop", "worker"],
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Seconds until ``/readyz`` answered 200."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"worker not ready in {timeout_s} s: {self.log_path.read_text()[-3000:]}"
        )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples, only those with ``labels`` if given."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if (line.startswith(name + "{") or line.startswith(name + " "))
            and all(label in line for label in wanted)
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None


@pytest.fixture
def workers(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Factory of worker processes for this test; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def make(name: str = "worker") -> WorkerProcess:
        process = WorkerProcess(stack_env, tmp_path / f"{name}-{len(started)}.log")
        started.append(process)
        return process.start()

    yield make
    for process in started:
        process.stop()


async def _read_records(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        empty = 0
        while empty < 3:
            batch = await consumer.getmany(timeout_ms=200)
            if not any(batch.values()):
                empty += 1
                continue
            empty = 0
            for chunk in batch.values():
                records.extend(chunk)
        return records
    finally:
        await consumer.stop()


def read_records(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every record of a topic, from the beginning (aiokafka ConsumerRecords)."""
    return asyncio.run(_read_records(bootstrap, topic, partitions))


def read_table(bootstrap: str, topic: str, partitions: int) -> dict[str, Any]:
    """The latest value per key of a table's changelog topic."""
    return _as_table(read_records(bootstrap, topic, partitions))


def _as_table(records: list[Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for record in records:
        key = _table_key(record.key)
        if record.value is None:
            table.pop(key, None)
        else:
            table[key] = orjson.loads(record.value)
    return table


def read_group_states(env: dict[str, str]) -> dict[str, Any]:
    """The latest value per group in the workers' group-state changelog."""
    topic = changelog_topic(env["LEARNLOOP_APP_ID"], "group-state")
    return read_table(env["LEARNLOOP_KAFKA_BOOTSTRAP"], topic, int(env["LEARNLOOP_PARTITIONS"]))


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns a truthy value; return it or fail."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last: {last!r})")
