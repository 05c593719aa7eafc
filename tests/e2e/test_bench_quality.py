"""``learnloop bench quality`` on a tiny scenario: it runs, isolates, and reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.e2e

TINY = """
name: tiny
seed: 2
rounds: 3
respect_rate: 0.0
feedback: {rate: 1.0, explanation: 1.0, edit: 0.0, rating: 0.5, engagement: 0.3, tool_use: 0.0}
noise: {off_topic: 0.0, chatter: 0.0, duplicate: 0.1}
preferences:
  - id: v2
    description: never the v1 client
    queries: ["how do I call billing?"]
    respecting: [Use the v2 client.]
    violating: [Use the v1 client.]
    explanations: [use the v2 client, "that's wrong, use the v2 client"]
    match: {any: [[v2]]}
  - id: owl
    description: an odd one
    queries: [summarise the incident]
    respecting: [Hoot hoot, the owl says the deploy broke it.]
    violating: [The deploy broke it.]
    explanations: [answer like an owl]
    match: {any: [[owl]]}
orgs:
  - id: acme
    teams:
      - id: pay
        users:
          - {id: a1, prefers: [v2]}
          - {id: a2, prefers: [v2]}
          - {id: a3, prefers: [v2]}
          - {id: a4, prefers: [owl]}
  - id: other
    teams:
      - id: ops
        users:
          - {id: b1, prefers: [owl]}
"""


def test_bench_quality_smoke(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "quality.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "learnloop",
            "bench",
            "quality",
            "-s",
            str(scenario),
            "--sink",
            "http",  # through POST /v1/events (the benchmark's default is the Kafka client)
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    table = result.stdout.decode()
    assert "learning quality: scenario tiny" in table
    assert "cross-tenant leaks" in table and "append-all-feedback mean" in table
    report = orjson.loads(out.read_bytes())["reports"][0]
    assert report["scenario"] == "tiny" and report["events"] > 20
    assert report["sink"] == "http"
    assert report["leakage"]["cross_group"] == 0
    assert report["leakage"]["cross_tenant"] == 0
    assert report["leakage"]["odd_in_team_org_rules"] == 0
    by_group = {g["group"]: g for g in report["groups"]}
    # one explanation is enough for a user group: every user learned its preference
    for user in ("a1", "a2", "a3", "a4", "b1"):
        assert by_group[f"user:{user}"]["recall"] == 1.0, by_group[f"user:{user}"]
    assert len(report["context"]["rounds"]) == 3
    assert all(0 <= r["violation_rate"] <= 1 for r in report["context"]["rounds"])
    assert report["context"]["cache_breaks"] == 0
