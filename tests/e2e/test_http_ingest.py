"""Malformed input through ``POST /v1/events``: a 4xx that names the problem, never a 500.

A real ``learnloop api`` process and a real worker, against the session's
embedded broker, serve the whole module. Every answer is checked for the
status, a machine-readable error, and the absence of a stack trace; the valid
events of a mixed batch must all reach the group stats.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from learnloop.embedded.broker import EmbeddedBroker, free_port
from schemas import EventCodec, from_json_event
from schemas.registry import confluent_header
from tests.conftest import WorkerProcess, wait_until
from tests.factories import BASE_TS, feedback, interaction
from tests.integration.test_ingest_kafka import module_env, start_module_worker

pytestmark = pytest.mark.e2e
JSON = {"content-type": "application/json"}
BODY_LIMIT = 8 * 1_048_576  # the API takes up to 8 events of max_event_bytes (1 MiB) per body


class Api:
    """A ``learnloop api`` child process on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "learnloop", "api"],
                env={**os.environ, **env, "LEARNLOOP_API_PORT": str(self.port)},
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout_s: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"api exited: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, 0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module")
def env(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return module_env(broker, tmp_path_factory.mktemp("http-ingest"))


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    process = start_module_worker(env, Path(env["LEARNLOOP_DATA_DIR"]) / "worker.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(env: dict[str, str], worker: WorkerProcess) -> Iterator[Api]:
    server = Api(env, Path(env["LEARNLOOP_DATA_DIR"]) / "api.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def post(api: Api, content: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST /v1/events and check what every answer must satisfy."""
    response = httpx.post(
        f"{api.url}/v1/events", content=content, headers=headers or {}, timeout=60
    )
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response


def _avro(event: dict[str, Any]) -> bytes:
    record, errors = from_json_event(event)
    assert record is not None, errors
    return EventCodec().encode(record)


def problem(response: httpx.Response, status: int) -> str:
    """The error code of a problem answer with ``status``."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert body["message"], body
    return str(body["error"])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "malformed_json"),
        (b'{"event_id": "e1", "type": "rating"', "malformed_json"),  # truncated
        (b'{"event_id": "\xff\xfe", "type": "rating"}', "malformed_json"),  # invalid UTF-8
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),  # deeper than the parser allows
        (b"", "empty_body"),
        (b"  \n\t ", "empty_body"),
        (b"[]", "no_events"),
        (_avro(feedback("a1", "rating", "i1")), "malformed_json"),  # Avro labelled as JSON
        (confluent_header(1) + b"\x02abc", "malformed_json"),
    ],
    ids=[
        "garbage",
        "truncated",
        "invalid-utf8",
        "too-deep",
        "empty",
        "whitespace",
        "empty-array",
        "avro-bytes",
        "confluent-bytes",
    ],
)
def test_unparseable_bodies_are_400(api: Api, body: bytes, error: str) -> None:
    assert problem(post(api, body, JSON), 400) == error


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/avro", None],
)
def test_wrong_content_type_is_415(api: Api, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = orjson.dumps(interaction("ct-i"))
    assert problem(post(api, body, headers), 415) == "unsupported_media_type"


def test_bodies_over_the_limit_are_413_declared_or_streamed(api: Api) -> None:
    ten_mb = orjson.dumps(
        {**feedback("big", "explanation", "i1"), "text": "x" * (10 * 1024 * 1024)}
    )
    assert len(ten_mb) > BODY_LIMIT
    assert problem(post(api, ten_mb, JSON), 413) == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: the server must count
        for start in range(0, len(ten_mb), 1 << 20):
            yield ten_mb[start : start + (1 << 20)]

    assert problem(post(api, chunks(), JSON), 413) == "body_too_large"


def test_a_mixed_batch_names_each_bad_field_and_publishes_every_good_event(api: Api) -> None:
    team = "http-mixed"

    def fb(event_id: str, type_: str, iid: str, **extra: Any) -> dict[str, Any]:
        return feedback(event_id, type_, iid, user="hana", team=team, org=None, **extra)

    deep: dict[str, Any] = {"leaf": "x"}
    for _ in range(60):
        deep = {"a": deep}
    valid = [
        interaction("h-i1", user="hana", team=team, org=None),
        fb("h-r1", "rating", "h-i1"),
        fb("h-x1", "explanation", "h-i1"),
        fb("h-e1", "edit", "h-i1"),
        fb("h-g1", "engagement", "h-i1", kind="dwell_ms", value=1500),
        fb("h-r2", "rating", "h-i1", value=None, score=4, scale=5),
    ]
    invalid: list[tuple[Any, str]] = [
        ({**fb("h-bad1", "rating", "h-i1"), "type": "telemetry"}, "type"),
        ({k: v for k, v in fb("h-bad2", "rating", "h-i1").items() if k != "user_id"}, "user_id"),
        (fb("h-bad3", "rating", "h-i1", value="up"), "value"),
        (fb("h-bad4", "rating", "h-i1", value=3), "value"),
        ({**fb("h-bad5", "rating", "h-i1"), "timestamp": "yesterday"}, "timestamp"),
        ({**fb("h-bad6", "rating", "h-i1"), "timestamp": [2026]}, "timestamp"),
        ({**fb("h-bad7", "rating", "h-i1"), "metadata": deep}, "metadata.a"),
        ({**fb("h-bad8", "rating", "h-i1"), "metadata": ["a", "b"]}, "metadata"),
        (fb("h-bad9", "explanation", "h-i1", text="y" * 100_000), "text"),
        (fb("h-bad10", "explanation", "h-i1", text="z" * 2_000_000), "text"),  # 2 MB string
        ({**fb("h-bad11", "rating", "h-i1"), "colour": "red"}, "colour"),
        (
            {**interaction("h-bad12"), "tool_calls": [{"name": "t", "status": "maybe"}]},
            "tool_calls[0].status",
        ),
        ({**fb("h-bad13", "rating", "h-i1"), "interaction_id": None}, "interaction_id"),
        ({**fb("h-bad14", "rating", "h-i1"), "event_id": 12}, "event_id"),
        ("not an event", ""),
        (None, ""),
        ([fb("h-bad17", "rating", "h-i1")], ""),
        ({"type": "rating", "timestamp": BASE_TS}, "event_id"),
    ]
    batch: list[Any] = []
    expected_rejects: dict[int, str] = {}
    good = iter(valid)
    for bad, field in invalid:  # interleave: good, bad, good, bad, ...
        batch.append(next(good, None) or fb(f"h-more{len(batch)}", "rating", "h-i1"))
        expected_rejects[len(batch)] = field
        batch.append(bad)
    valid_sent = [e for i, e in enumerate(batch) if i not in expected_rejects]
    body = orjson.dumps(batch)
    assert len(body) < BODY_LIMIT

    response = post(api, body, {"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 202, response.text[:500]
    answer = response.json()
    assert answer["accepted"] == len(valid_sent)
    assert answer["event_ids"] == [e["event_id"] for e in valid_sent]
    rejected = {r["index"]: r for r in answer["rejected"]}
    assert sorted(rejected) == sorted(expected_rejects)
    for index, field in expected_rejects.items():
        errors = rejected[index]["errors"]
        assert errors and all(e["reason"] for e in errors), rejected[index]
        assert field in [e["field"] for e in errors], (index, batch[index], errors)
        item = batch[index]
        expected_id = item.get("event_id") if isinstance(item, dict) else None
        assert rejected[index]["event_id"] == (
            expected_id if isinstance(expected_id, str) else None
        )

    # every valid event of the batch was published and processed by the worker
    counts: dict[str, int] = {}
    for event in valid_sent:
        counts[event["type"]] = counts.get(event["type"], 0) + 1

    def stats() -> dict[str, Any] | None:
        r = httpx.get(f"{api.url}/v1/groups/team:{team}/stats", timeout=5)
        assert r.status_code in (200, 404), r.text
        return r.json() if r.status_code == 200 and r.json()["counts"] == counts else None

    try:
        wait_until(stats, 60)
    except AssertionError:
        r = httpx.get(f"{api.url}/v1/groups/team:{team}/stats", timeout=5)
        raise AssertionError(f"expected counts {counts}, stats say {r.text[:500]}") from None


def test_a_single_invalid_event_is_202_with_its_error(api: Api) -> None:
    """One event (not an array) that fails validation: index 0 names the field."""
    response = post(api, orjson.dumps(feedback("solo", "rating", "i1", value=7)), JSON)
    assert response.status_code == 202
    answer = response.json()
    assert answer["accepted"] == 0 and answer["event_ids"] == []
    assert answer["rejected"] == [
        {
            "index": 0,
            "event_id": "solo",
            "errors": [{"field": "value", "reason": "must be +1 or -1, got 7"}],
        }
    ]
