"""Fine-tuning export as users run it: ``learnloop export`` and ``POST /v1/groups/{g}/export``.

One worker and one API process on the session broker (the memory API's stack);
events go in through ``POST /v1/events``. The formats themselves are covered in
``tests/integration/test_export.py``; here the command and the endpoint are driven
from outside, with keys of several tenants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import wait_until
from tests.e2e.test_memory_api import ACME, ADMIN, GLOBEX, client, send, stack  # noqa: F401
from tests.factories import feedback, interaction
from tests.unit.test_export_format import texts, validate_rows

pytestmark = pytest.mark.e2e
CAROL_MAIL = "carol.secret@example.org"


@pytest.fixture(scope="module")
def dataset(stack: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """Team ``export`` of acme with edits and ratings; team ``rival`` of globex."""
    unique = uuid.uuid4().hex[:6]
    events: list[dict[str, Any]] = []
    for n in range(3):
        iid = f"exp-{unique}-{n}"
        events.append(interaction(iid, user=f"u{n}", team="export", query=f"question {n}?",
                                  response=f"draft answer {n}"))
        events.append(feedback(f"ed-{iid}", "edit", iid, user=f"u{n}", team="export",
                               original=f"draft answer {n}",
                               edited=f"better answer {n}, ask {CAROL_MAIL}"))
        events.append(feedback(f"up-{iid}", "rating", iid, user=f"u{n}", team="export", value=1))
    rival = f"riv-{unique}"
    events.append(interaction(rival, user="zed", team="rival", org="globex",
                              query="RIVAL question?", response="RIVAL answer"))
    events.append(feedback(f"ed-{rival}", "edit", rival, user="zed", team="rival", org="globex",
                           original="RIVAL answer", edited="RIVAL better answer"))
    send(stack, events)

    def owned() -> bool:
        groups = {g: client(stack).get(f"/v1/groups/{g}/stats") for g in
                  ("team:export", "team:rival")}
        return all(a.status_code == 200 and a.json().get("org") for a in groups.values())

    wait_until(owned, 60, 0.3)
    return {"edits": 3}


def test_the_endpoint_returns_a_trainer_ready_file_with_its_summary(stack, dataset) -> None:  # noqa: F811
    answer = client(stack, ACME).post("/v1/groups/team:export/export", json={"format": "dpo"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert "team-export-dpo.jsonl" in answer.headers["content-disposition"]
    rows = validate_rows(answer.content, "dpo", "messages")
    summary = json.loads(answer.headers["x-export-summary"])
    assert summary["written"] == len(rows) and summary["sources"]["edit"] == dataset["edits"]
    assert summary["owner"] == "acme"
    written = [text for row in rows for text in texts(row)]
    assert not any("RIVAL" in text for text in written)
    assert not any(CAROL_MAIL in text for text in written), "personal data must be redacted"
    assert any("better answer" in text for text in written)


def test_the_endpoint_is_admin_only_and_hides_other_tenants(stack, dataset) -> None:  # noqa: F811
    body = {"format": "sft"}
    assert client(stack, GLOBEX).post("/v1/groups/team:export/export", json=body
                                      ).status_code == 403  # read and ingest only
    foreign = client(stack, ACME).post("/v1/groups/team:rival/export", json=body)
    assert foreign.status_code == 404, foreign.text  # as if globex's group did not exist
    own = client(stack, ADMIN).post("/v1/groups/team:rival/export", json=body)
    assert own.status_code == 200
    assert [r["messages"][-1]["content"] for r in validate_rows(own.content, "sft", "messages")
            ] == ["RIVAL better answer"]


@pytest.mark.parametrize(("body", "field"), [
    ({"format": "xml"}, "format"),
    ({"format": "sft", "min_agreement": 2}, "min_agreement"),
    ({"format": "sft", "since": "last tuesday"}, None),
    ({"format": "kto", "layout": "openai"}, None),
    ({"format": "sft", "colour": "red"}, "colour"),
])
def test_bad_export_requests_are_4xx(stack, dataset, body, field) -> None:  # noqa: F811
    answer = client(stack, ACME).post("/v1/groups/team:export/export", json=body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert "Traceback" not in answer.text
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]]
    else:
        assert problem["message"]


def _cli(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    env = {**os.environ, **stack["env"]}
    return subprocess.run([sys.executable, "-m", "learnloop", "export", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_command_writes_the_file_and_prints_a_summary(stack, dataset, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "export-sft.jsonl"
    done = _cli(stack, "--group", "team:export", "--format", "sft",
                "--layout", "prompt_completion", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    rows = validate_rows(out.read_bytes(), "sft", "prompt_completion")
    assert summary["written"] == len(rows) == dataset["edits"]
    assert not (tmp_path / "export-sft.jsonl.part").exists()
    assert all(CAROL_MAIL not in row["completion"] for row in rows)


def test_the_command_rejects_bad_options_without_a_trace(stack, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "never.jsonl"
    for args in (["--format", "xml"], ["--format", "sft", "--since", "someday"],
                 ["--format", "kto", "--layout", "openai"]):
        done = _cli(stack, "--group", "team:export", "--out", str(out), *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "error:" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
