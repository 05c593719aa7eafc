"""The real pipeline for a benchmark: ``learnloop up`` in a child process.

The benchmarks drive exactly what a user runs: the embedded Tansu broker, the
stream worker and the HTTP API, started by ``learnloop up`` with a fresh data
directory, and talk to it only through its public interfaces (Kafka, HTTP,
``/metrics``). "Drained" means the worker has consumed every event sent, every
synthesis request it emitted has been applied, the API shows every memory
version the worker wrote, and none of that moved for a few polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from learnloop.embedded.broker import _die_with_parent, free_port
from learnloop.errors import LearnloopError


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class UpStack:
    """``with UpStack(workdir) as stack:`` — a running ``learnloop up``, stopped on exit."""

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, config: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = workdir / "data"
        self.env = {
            **os.environ,
            "LEARNLOOP_DATA_DIR": str(self.data),
            "LEARNLOOP_LOG_FORMAT": "json",
            "LEARNLOOP_LOG_LEVEL": "warning",
            "LEARNLOOP_KAFKA_BOOTSTRAP": "",
            **(env or {}),
        }
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "up.log"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.runtime: dict[str, Any] = {}
        self.ready_s = 0.0

    def __enter__(self) -> UpStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "learnloop", "up", "--port", str(self.port)]
        if self.config is not None:
            command += ["--config", str(self.config)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout_s: float = 180.0) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.process is not None
            if self.process.poll() is not None:
                raise LearnloopError(
                    f"learnloop up exited with {self.process.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            runtime = self.data / "up.json"
            try:
                ready = self.http.get("/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and runtime.is_file():
                self.runtime = orjson.loads(runtime.read_bytes())
                self.ready_s = time.monotonic() - started
                return
            time.sleep(0.2)
        raise LearnloopError(f"learnloop up was not ready within {timeout_s} s")

    @property
    def bootstrap(self) -> str:
        return str(self.runtime["bootstrap"])

    @property
    def worker_pid(self) -> int:
        return int(self.runtime["pids"]["worker"])

    def worker_metrics(self) -> str:
        return httpx.get(str(self.runtime["worker_metrics"]), timeout=10).text

    def groups(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.http.get("/v1/groups", params={"limit": 1000, "offset": offset}).json()
            found += page["groups"]
            offset += len(page["groups"])
            if not page["groups"] or offset >= page["total"]:
                return found

    def memory(self, group: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/groups/{group}/memory")
        if response.status_code == 404:
            return {"group": group, "version": 0, "items": []}
        response.raise_for_status()
        return dict(response.json())

    def context(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/context", json=body)
        response.raise_for_status()
        return dict(response.json())

    def drained(self, sent: int, timeout_s: float = 120.0, quiet_polls: int = 3) -> float:
        """Block until the pipeline has processed ``sent`` events and gone quiet; seconds."""
        started = time.monotonic()
        previous: tuple[Any, ...] | None = None
        quiet = 0
        while time.monotonic() - started < timeout_s:
            text = self.worker_metrics()
            joined = metric_sum(text, "learnloop_events_in_total", stage="join")
            triggers = metric_sum(text, "learnloop_triggers_total")
            applied = metric_sum(text, "learnloop_synthesis_requests_total", outcome="ok")
            written = metric_sum(text, "learnloop_memory_versions_total")
            aggregated = metric_sum(text, "learnloop_events_in_total", stage="aggregate")
            visible = sum(g["version"] for g in self.groups())
            state = (joined, triggers, applied, written, aggregated, visible)
            settled = joined >= sent and applied >= triggers and visible >= written
            if settled and state == previous:
                quiet += 1
                if quiet >= quiet_polls:
                    return time.monotonic() - started
            else:
                quiet = 0
            previous = state
            time.sleep(0.4)
        raise LearnloopError(
            f"the pipeline did not drain within {timeout_s} s (last: {previous}, sent {sent})"
        )

    def stop(self) -> None:
        self.http.close()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
