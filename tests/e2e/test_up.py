"""``learnloop up`` as a user runs it: ready, emit events, see them, stop with no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from learnloop.embedded.broker import free_port
from tests.conftest import wait_until
from tests.factories import feedback, interaction

pytestmark = pytest.mark.e2e
LEARNLOOP = [sys.executable, "-m", "learnloop"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


class Up:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.data = tmp_path / "data"
        self.env = {
            **os.environ,
            "LEARNLOOP_DATA_DIR": str(self.data),
            "LEARNLOOP_LOG_FORMAT": "json",
            "LEARNLOOP_KAFKA_BOOTSTRAP": "",
        }
        self.log = (tmp_path / "up.log").open("wb")
        self.process = subprocess.Popen(
            [*LEARNLOOP, "up", "--port", str(self.port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 90) -> float:
        started = time.monotonic()

        def ready() -> bool:
            assert self.process.poll() is None, "learnloop up exited"
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, 0.2)
        return time.monotonic() - started

    def runtime(self) -> dict:
        return orjson.loads((self.data / "up.json").read_bytes())


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    stack = Up(tmp_path)
    yield stack
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
        stack.process.wait(60)
    stack.log.close()


def test_up_ready_emit_and_sigterm_leaves_no_orphans(up: Up, tmp_path: Path) -> None:
    up.wait_ready()
    runtime = up.runtime()
    pids = runtime["pids"]
    assert _alive(pids["broker"]) and _alive(pids["worker"])

    events = tmp_path / "events.jsonl"
    rows = [
        interaction("i1"),
        feedback("r1", "rating", "i1"),
        feedback("x1", "explanation", "i1"),
        {"event_id": "bad", "type": "rating"},
    ]
    events.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    result = subprocess.run(
        [*LEARNLOOP, "emit", str(events)], env=up.env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 1  # one line was invalid, and said so
    assert orjson.loads(result.stdout.splitlines()[-1]) == {"sent": 3, "rejected": 1}
    assert b"line 4" in result.stderr and b"timestamp" in result.stderr

    def consumed() -> bool:
        text = httpx.get(runtime["worker_metrics"], timeout=5).text
        return 'learnloop_events_in_total{stage="join",type="explanation"} 1.0' in text

    wait_until(consumed, 60)
    stats = wait_until(
        lambda: (
            (r := httpx.get(f"{up.url}/v1/groups/team:search/stats")).status_code == 200
            and r.json()
        ),
        30,
    )
    assert stats["counts"] == {"interaction": 1, "rating": 1, "explanation": 1}
    assert "learnloop_api_requests_total" in httpx.get(f"{up.url}/metrics").text
    assert httpx.get(f"{up.url}/").status_code == 200

    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(60) == 0
    wait_until(lambda: not _alive(pids["broker"]) and not _alive(pids["worker"]), 10)
    assert not (up.data / "up.json").exists()


def test_sigkill_of_up_takes_broker_and_worker_down(up: Up) -> None:
    up.wait_ready()
    pids = up.runtime()["pids"]
    up.process.send_signal(signal.SIGKILL)
    up.process.wait(10)
    wait_until(lambda: not _alive(pids["broker"]) and not _alive(pids["worker"]), 15)


def test_help_for_every_command() -> None:
    for command in ("up", "worker", "api", "emit"):
        result = subprocess.run(
            [*LEARNLOOP, command, "--help"], capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert b"Usage" in result.stdout


def test_bad_setting_names_key_and_value(tmp_path: Path) -> None:
    env = {**os.environ, "LEARNLOOP_PARTITIONS": "zero", "LEARNLOOP_KAFKA_BOOTSTRAP": "x:1"}
    result = subprocess.run(
        [*LEARNLOOP, "worker"], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert b"partitions" in result.stderr and b"zero" in result.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("policy:\n  team:\n    min_users: -1\n")
    result = subprocess.run(
        [*LEARNLOOP, "worker", "--config", str(config)],
        env=env | {"LEARNLOOP_PARTITIONS": "4"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"policy.team.min_users" in result.stderr and b"-1" in result.stderr


def _up_exits_early(
    tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None
) -> tuple[int, str, bool]:
    """Run ``learnloop up`` meant to fail: its exit code, its output, and whether a broker
    was started (the embedded broker writes its log in the data directory)."""
    data = tmp_path / "data"
    env = {**os.environ, "LEARNLOOP_DATA_DIR": str(data), "LEARNLOOP_KAFKA_BOOTSTRAP": ""}
    env.pop("LEARNLOOP_API_KEYS", None)
    env.update(extra_env or {})
    result = subprocess.run(
        [*LEARNLOOP, "up", *args], env=env, capture_output=True, timeout=60, check=False
    )
    output = (result.stdout + result.stderr).decode()
    return result.returncode, output, (data / "broker.log").exists()


def test_up_refuses_an_open_address_without_auth_before_starting_anything(
    tmp_path: Path,
) -> None:
    code, output, broker_started = _up_exits_early(
        tmp_path, "--host", "0.0.0.0", "--port", str(free_port())
    )
    assert code == 2, output
    assert "refusing to serve 0.0.0.0 without authentication" in output
    assert not broker_started


def test_up_names_a_too_short_api_key_without_printing_it(tmp_path: Path) -> None:
    keys = '{"ops": {"key": "hunter2-prodkey", "scopes": ["read"]}}'
    code, output, broker_started = _up_exits_early(tmp_path, extra_env={"LEARNLOOP_API_KEYS": keys})
    assert code == 2, output
    assert "api_keys.ops.key" in output and "at least 16" in output, output
    assert "hunter2" not in output, output
    assert not broker_started


def test_up_on_a_taken_port_fails_at_once(tmp_path: Path) -> None:
    """The API socket is bound before the broker and the worker start (and pick ports)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output, broker_started = _up_exits_early(tmp_path, "--port", str(port))
    assert code == 1, output
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert not broker_started
