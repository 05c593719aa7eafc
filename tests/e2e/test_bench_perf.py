"""Smoke runs of the performance benchmarks: each works end to end and writes its JSON.

They check that the commands work, not how fast anything is (the numbers are in
docs/BENCHMARKS.md, printed by the full-size runs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.e2e
BENCH = [sys.executable, "-m", "learnloop", "bench"]


def _run(args: list[str], out: Path) -> tuple[str, dict]:
    result = subprocess.run(
        [*BENCH, *args, "--json", str(out)], capture_output=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result.stdout.decode(), orjson.loads(out.read_bytes())


def test_latency_smoke(tmp_path: Path) -> None:
    table, report = _run(["latency", "--trials", "2"], tmp_path / "latency.json")
    assert "end-to-end learning latency" in table
    for scope in ("user", "team"):
        row = report["scopes"][scope]
        assert row["learned"] == 2 and row["timed_out"] == 0
        assert 0 < row["p50_ms"] <= row["max_ms"]


def test_memory_smoke(tmp_path: Path) -> None:
    table, report = _run(["memory", "--users", "60"], tmp_path / "memory.json")
    assert "worker memory and growth" in table and "growth" in table
    small, large = report["phases"]
    assert (small["users"], large["users"]) == (6, 60)
    # 60 users in teams of 10 and orgs of 100, plus global
    assert large["groups"] == 60 + 6 + 1 + 1
    assert large["events_total"] > small["events_total"] > 0
    assert large["worker_rss_mb"] > 0


def test_throughput_and_context_smoke(tmp_path: Path) -> None:
    table, report = _run(["throughput", "--events", "1000"], tmp_path / "throughput.json")
    assert "worker / raw consume+decode" in table
    assert report["events"] == 1000 and report["worker"]["events_per_s"] > 0
    # learnloop's own work measured without Kafka, stage by stage, beside the worker
    stages = report["processors"]
    assert "processors alone: fold (µs per event)" in table
    assert stages["total"] == pytest.approx(
        sum(stages[s] for s in ("decode", "join", "bundle", "unbundle", "fold", "state out"))
    )
    assert stages["groups"] > 0 and all(stages[s] > 0 for s in stages)
    table, report = _run(
        ["context", "--groups", "5", "--items", "4", "--items", "8", "--requests", "40"],
        tmp_path / "context.json",
    )
    assert [r["items_per_group"] for r in report["runs"]] == [4, 8]
    assert all(r["requests_per_s"] > 0 for r in report["runs"])
