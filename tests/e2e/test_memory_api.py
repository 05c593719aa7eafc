"""The memory and context API as agents and operators use it, on the real pipeline.

One worker and one ``learnloop api`` process per module, on the session broker;
events go in through ``POST /v1/events``, memory comes back through ``/v1``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
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

from learnloop.embedded.broker import free_port
from learnloop.store.factory import open_store
from tests.conftest import WorkerProcess, unique_env, wait_until
from tests.factories import feedback, interaction

pytestmark = pytest.mark.e2e
ADMIN = "admin-key-0123456789"
ACME = "acme-key-0123456789ab"
GLOBEX = "globex-key-0123456789"
KEYS = {
    "ops": {"key": ADMIN, "scopes": ["admin", "read", "ingest"], "tenant": "*"},
    "acme": {"key": ACME, "scopes": ["admin", "read", "ingest"], "tenant": "acme"},
    "globex": {"key": GLOBEX, "scopes": ["read", "ingest"], "tenant": "globex"},
}


class ApiProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "LEARNLOOP_API_PORT": str(self.port)}
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "learnloop", "api"],
                                            env=self.env, stdout=log, stderr=log)
        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, \
                self.log_path.read_text()[-2000:]
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, 60, 0.2)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("memory-api")
    env = unique_env(broker, tmp / "data", LEARNLOOP_API_KEYS=orjson.dumps(KEYS).decode())
    worker = WorkerProcess(env, tmp / "worker.log").start()
    worker.wait_ready()
    api = ApiProcess(env, tmp / "api.log").start()
    clients: dict[tuple[str, str], httpx.Client] = {}
    stack_state = {"env": env, "api": api, "worker": worker, "tmp": tmp, "clients": clients}
    yield stack_state
    for open_client in clients.values():
        open_client.close()
    api.stop()
    if "restarted" in stack_state:
        stack_state["restarted"].stop()
    worker.stop()


def client(stack: dict[str, Any], key: str = ADMIN) -> httpx.Client:
    """One client per API address and key, closed when the module's stack stops."""
    cache_key = (stack["api"].url, key)
    if cache_key not in stack["clients"]:
        stack["clients"][cache_key] = httpx.Client(
            base_url=stack["api"].url, timeout=30, headers={"authorization": f"Bearer {key}"})
    return stack["clients"][cache_key]


def send(stack: dict[str, Any], events: list[dict[str, Any]], key: str = ADMIN) -> None:
    answer = client(stack, key).post("/v1/events", json=events)
    assert answer.status_code == 202, answer.text
    assert answer.json()["rejected"] == [], answer.text


def teach(stack, user: str, text: str, *, team="search", org="acme", n: int = 0,
          key: str = ADMIN) -> None:
    iid = f"{user}-{uuid.uuid4().hex[:8]}"
    send(stack, [interaction(iid, user=user, team=team, org=org),
                 feedback(f"x-{iid}", "explanation", iid, user=user, team=team, org=org,
                          text=text)], key)


def memory(stack, group: str, key: str = ADMIN, **params: Any) -> dict[str, Any]:
    answer = client(stack, key).get(f"/v1/groups/{group}/memory", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def active_rules(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in snapshot["items"] if i["kind"] == "rule" and i["status"] == "active"]


def wait_rule(stack, group: str, needle: str, timeout_s: float = 30) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        answer = client(stack).get(f"/v1/groups/{group}/memory")
        if answer.status_code != 200:
            return None
        snapshot = answer.json()
        return snapshot if any(needle.lower() in i["text"].lower()
                               for i in active_rules(snapshot)) else None
    return wait_until(found, timeout_s, 0.2)


def context(stack, key: str = ADMIN, **body: Any) -> dict[str, Any]:
    answer = client(stack, key).post("/v1/context", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_user_rule_reaches_context_within_seconds(stack) -> None:
    started = time.monotonic()
    teach(stack, "alice", "that's wrong, you should have used the v2 API")
    snapshot = wait_rule(stack, "user:alice", "v2")
    elapsed = time.monotonic() - started
    assert elapsed < 30
    rule = active_rules(snapshot)[0]
    assert rule["provenance"]["user_ids"] == ["alice"]
    assert rule["provenance"]["synthesizer"] == "offline"
    first = context(stack, user_id="alice", team_id="search", org_id="acme", query="billing?")
    second = context(stack, user_id="alice", team_id="search", org_id="acme", query="other")
    assert "v2" in first["prefix"]
    assert first["prefix"] == second["prefix"]  # byte-identical across queries
    assert first["versions"]["user:alice"] == snapshot["version"]
    assert rule["item_id"] in [i["item_id"] for i in first["items"]]


def test_prefix_changes_with_a_new_version_and_pinning_restores_it(stack) -> None:
    teach(stack, "bob", "please always answer in German")
    v1 = wait_rule(stack, "user:bob", "german")
    before = context(stack, user_id="bob", query="q")
    teach(stack, "bob", "never use the deprecated v1 client")
    wait_rule(stack, "user:bob", "v1 client")
    after = context(stack, user_id="bob", query="q")
    assert after["prefix"] != before["prefix"]
    pinned = context(stack, user_id="bob", query="q", pin={"user:bob": v1["version"]})
    assert pinned["prefix"] == before["prefix"]
    assert pinned["versions"]["user:bob"] == v1["version"]


def test_budget_limits_the_prefix(stack) -> None:
    for text in ("always cite the quarterly revenue report", "answer in British spelling",
                 "never suggest spreadsheets for invoicing", "prefer bullet lists over prose"):
        teach(stack, "carol", text)
    def rules() -> int:
        answer = client(stack).get("/v1/groups/user:carol/memory")
        return len(active_rules(answer.json())) if answer.status_code == 200 else 0

    wait_until(lambda: rules() >= 2, 30, 0.3)
    small = context(stack, user_id="carol", query="q", max_tokens=40)
    large = context(stack, user_id="carol", query="q", max_tokens=2000)
    assert small["tokens"] <= 40
    assert len(small["items"]) < len(large["items"])


def test_a_narrower_rule_overrides_the_wider_rule_it_contradicts(stack) -> None:
    """Precedence end to end: a user's rule beats the team rule it contradicts.

    The team rule is learned from three teammates (the default team policy); the
    user's own rule says the opposite. The user's context keeps the user rule, leaves
    the team rule out of the prefix and lists it in ``dropped`` with the rule that
    won; a teammate without a rule of their own still gets the team rule.
    """
    team = f"prec{uuid.uuid4().hex[:6]}"
    for name in ("pat", "quinn", "rae"):
        teach(stack, f"{name}-{team}", "always answer in English", team=team)
    team_rule = active_rules(wait_rule(stack, f"team:{team}", "english", 60))[0]
    assert team_rule["provenance"]["distinct_users"] >= 3
    uma = f"uma-{team}"
    teach(stack, uma, "please always answer in German", team=None)  # only her own group
    user_rule = active_rules(wait_rule(stack, f"user:{uma}", "german"))[0]

    mine = context(stack, user_id=uma, team_id=team, org_id="acme", query="q")
    assert set(mine["versions"]) >= {f"user:{uma}", f"team:{team}"}  # both groups were used
    assert "German" in mine["prefix"] and "English" not in mine["prefix"]
    assert [i["item_id"] for i in mine["items"]].count(user_rule["item_id"]) == 1
    assert team_rule["item_id"] not in [i["item_id"] for i in mine["items"]]
    dropped = {d["item_id"]: d for d in mine["dropped"]}
    assert dropped[team_rule["item_id"]] == {
        "item_id": team_rule["item_id"],
        "group": f"team:{team}",
        "reason": f"overridden by {user_rule['item_id']} in user:{uma}",
    }
    # the same answer again: byte-identical prefix (now from the prefix cache)
    assert context(stack, user_id=uma, team_id=team, org_id="acme", query="other")["prefix"] \
        == mine["prefix"]

    teammate = context(stack, user_id=f"val-{team}", team_id=team, org_id="acme", query="q")
    assert team_rule["item_id"] in [i["item_id"] for i in teammate["items"]]
    assert "English" in teammate["prefix"] and "German" not in teammate["prefix"]
    assert team_rule["item_id"] not in {d["item_id"] for d in teammate["dropped"]}


def test_edit_rollback_reset_through_the_api(stack) -> None:
    teach(stack, "dave", "use metric units in every answer")
    snapshot = wait_rule(stack, "user:dave", "metric")
    rule = active_rules(snapshot)[0]
    api = client(stack)
    edited = api.patch(f"/v1/groups/user:dave/items/{rule['item_id']}",
                       json={"text": "Use metric units."})
    assert edited.status_code == 200, edited.text
    assert memory(stack, "user:dave")["items"][0]["text"] == "Use metric units."
    back = api.post("/v1/groups/user:dave/rollback", json={"version": snapshot["version"]})
    assert back.status_code == 200, back.text
    restored = memory(stack, "user:dave")
    assert restored["items"] == snapshot["items"]  # exactly the earlier version's items
    assert restored["reason"] == f"rollback:{snapshot['version']}"
    versions = api.get("/v1/groups/user:dave/versions").json()["versions"]
    assert [v["reason"] for v in versions][-2:] == ["edit", f"rollback:{snapshot['version']}"]
    diff = api.get("/v1/groups/user:dave/diff",
                   params={"from": snapshot["version"], "to": versions[-2]["version"]}).json()
    assert diff["changed"][0]["fields"] == ["text"]
    assert api.post("/v1/groups/user:dave/reset").status_code == 200
    assert memory(stack, "user:dave")["items"] == []
    assert "metric" not in context(stack, user_id="dave", query="q")["prefix"]


def versions_at_rest(stack) -> dict[bytes, dict[str, Any]]:
    """The versions topic as compaction leaves it: each key's last record."""
    env = stack["env"]
    topic = env["LEARNLOOP_TOPICS__VERSIONS"]

    async def read() -> dict[bytes, dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=env["LEARNLOOP_KAFKA_BOOTSTRAP"], enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(int(env["LEARNLOOP_PARTITIONS"]))]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            last: dict[bytes, dict[str, Any]] = {}
            empty = 0
            while empty < 3:  # caught up: three empty polls in a row
                batch = await consumer.getmany(timeout_ms=300)
                empty = 0 if batch else empty + 1
                for records in batch.values():
                    last.update((r.key, orjson.loads(r.value)) for r in records)
            return last
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_forget_user_retires_what_only_they_supported(stack) -> None:
    teach(stack, "erin", "my phone is secret, never show it")
    before = wait_rule(stack, "user:erin", "phone")
    key = f"user:erin#{before['version']:010d}".encode()
    assert "phone" in str(versions_at_rest(stack)[key]["items"])  # as the worker wrote it
    answer = client(stack).delete("/v1/users/erin")
    assert answer.status_code == 200, answer.text
    groups = {g["group"]: g for g in answer.json()["groups"]}
    assert groups["user:erin"]["retired_items"]
    # the versions from before the forgetting are written again without her, under
    # their own keys: once compacted, the topic no longer holds her words or her id
    assert groups["user:erin"]["versions_rewritten"] >= 1
    at_rest = versions_at_rest(stack)[key]
    assert "phone" not in str(at_rest["items"])
    assert all("erin" not in i["provenance"]["user_ids"] for i in at_rest["items"])
    assert at_rest["version"] == before["version"]
    # asked again: nothing left to forget or to rewrite, and the group is still named
    again = client(stack).delete("/v1/users/erin").json()["groups"]
    assert {"group": "user:erin", "outcome": "nothing_to_forget", "retired_items": [],
            "versions_rewritten": 0} in again
    after = memory(stack, "user:erin")
    assert all(i["status"] == "retired" and "phone" not in i["text"] for i in after["items"])
    stats = client(stack).get("/v1/groups/team:search/stats").json()
    assert "erin" not in str(stats)
    # the version from before the forgetting reads without her, and rolling back to it
    # does not bring her words back
    old = memory(stack, "user:erin", version=before["version"])
    assert "phone" not in str(old["items"]), old["items"]
    assert all("erin" not in i["provenance"]["user_ids"] for i in old["items"])
    back = client(stack).post("/v1/groups/user:erin/rollback", json={"version": before["version"]})
    assert back.status_code == 200, back.text
    assert "phone" not in str(memory(stack, "user:erin")["items"])
    diff = client(stack).get("/v1/groups/user:erin/diff",
                             params={"from": before["version"], "to": after["version"]}).json()
    assert "phone" not in str(diff)


def test_tenant_keys_never_reach_other_tenants(stack) -> None:
    iid = "gx-1"
    send(stack, [interaction(iid, user="gina", team="ops", org="globex"),
                 feedback("gx-x1", "explanation", iid, user="gina", team="ops", org="globex",
                          text="never share pricing of other customers")], GLOBEX)
    wait_rule(stack, "user:gina", "pricing")
    acme = client(stack, ACME)
    for path in ("/v1/groups/user:gina/memory", "/v1/groups/user:gina/versions",
                 "/v1/groups/user:gina/stats", "/v1/groups/org:globex/memory",
                 "/v1/groups/user:gina/diff?from=0&to=1"):
        assert acme.get(path).status_code == 404, path
    assert acme.post("/v1/groups/user:gina/reset").status_code == 404
    listed = acme.get("/v1/groups", params={"limit": 1000}).json()["groups"]
    assert all(g["group"] != "user:gina" for g in listed)
    # an all-tenant key asks first, so gina's prefix is in the API's prefix cache ...
    request = {"user_id": "x", "groups": ["user:gina"], "query": "q"}
    assert "pricing" in client(stack).post("/v1/context", json=request).text
    # ... and acme's identical request still gets none of it
    stolen = acme.post("/v1/context", json=request)
    assert stolen.status_code == 200 and "pricing" not in stolen.text
    assert {"group": "user:gina", "reason": "not visible to this key"} in stolen.json()["hidden"]
    assert acme.post("/v1/context", json={"user_id": "gina", "org_id": "globex",
                                          "query": "q"}).status_code == 403
    foreign = acme.post("/v1/events", json=[interaction("a-x", user="z", org="globex")])
    assert foreign.json()["rejected"][0]["errors"][0]["field"] == "org_id"
    readonly = client(stack, GLOBEX).post("/v1/groups/user:gina/reset")
    assert readonly.status_code == 403
    assert httpx.get(f"{stack['api'].url}/v1/groups").status_code == 401


def fast_path_count(stack, result: str) -> float:
    """``learnloop_context_fast_path_total`` for ``result``, from the API's /metrics."""
    name = f'learnloop_context_fast_path_total{{result="{result}"}} '
    lines = httpx.get(f"{stack['api'].url}/metrics", timeout=5).text.splitlines()
    return next((float(x[len(name):]) for x in lines if x.startswith(name)), 0.0)


def test_context_fast_path_answers_byte_for_byte_as_the_route(stack) -> None:
    """A plain JSON request is served by the fast path; the same body sent as another
    JSON media type goes through FastAPI's route. Both answer the same bytes."""
    teach(stack, "fern", "always show the price in euros")
    wait_rule(stack, "user:fern", "euros")
    body = orjson.dumps({"user_id": "fern", "team_id": "search", "org_id": "acme",
                         "query": "price of a ticket?", "max_tokens": 900})
    served, handed_on = fast_path_count(stack, "served"), fast_path_count(stack, "handed_on")
    fast = client(stack).post("/v1/context", content=body,
                              headers={"content-type": "application/json"})
    assert fast_path_count(stack, "served") == served + 1
    routed = client(stack).post("/v1/context", content=body,
                                headers={"content-type": "application/vnd.agent+json"})
    assert fast_path_count(stack, "handed_on") == handed_on + 1
    assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
    assert "euros" in fast.json()["prefix"]
    assert fast.content == routed.content
    for header in ("content-type", "content-length"):
        assert fast.headers[header] == routed.headers[header]


def test_a_context_body_over_the_fast_path_limit_is_answered_by_the_route(stack) -> None:
    """The fast path stops reading past its limit and hands the stream on: what it read
    is replayed, the rest still comes from the socket, and the answer is complete."""
    teach(stack, "hugh", "always answer in metric units")
    wait_rule(stack, "user:hugh", "metric")
    small = {"user_id": "hugh", "query": "how far is it?"}
    large = {**small, "metadata": {"note": "x" * (400 * 1024)}}  # over FAST_BODY_LIMIT
    handed_on = fast_path_count(stack, "handed_on")
    answer = client(stack).post("/v1/context", json=large)
    assert answer.status_code == 200, answer.text[:500]
    assert fast_path_count(stack, "handed_on") == handed_on + 1
    assert answer.content == client(stack).post("/v1/context", json=small).content
    assert "metric" in answer.json()["prefix"]


def test_context_problems_and_invalid_bodies_are_answered_by_the_route(stack) -> None:
    """What the fast path cannot serve it hands on, body and all: the answers are the
    route's (401, 403, 422 naming the field, malformed JSON) and are counted."""
    handed_on = fast_path_count(stack, "handed_on")
    anonymous = httpx.post(f"{stack['api'].url}/v1/context", json={"user_id": "a"})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthenticated"
    foreign = client(stack, ACME).post("/v1/context", json={"user_id": "a", "org_id": "globex"})
    assert foreign.status_code == 403 and foreign.json()["error"] == "forbidden"
    invalid = client(stack).post("/v1/context", json={"user_id": "a", "max_examples": 99})
    assert invalid.status_code == 422
    assert [e["field"] for e in invalid.json()["errors"]] == ["max_examples"]
    broken = client(stack).post("/v1/context", content=b'{"user_id": "a",',
                                headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"] == "invalid_request"
    assert fast_path_count(stack, "handed_on") == handed_on + 4
    scraped = httpx.get(f"{stack['api'].url}/metrics", timeout=5).text
    assert 'learnloop_api_requests_total{route="/v1/context",status="200"}' in scraped


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/v1/context", {"query": "q"}, "user_id"),
        ("post", "/v1/context", {"user_id": "a", "max_tokens": -5}, "max_tokens"),
        ("post", "/v1/context", {"user_id": "a", "colour": 1}, "colour"),
        ("post", "/v1/groups/user:alice/rollback", {"version": "x"}, "version"),
        ("patch", "/v1/groups/user:alice/items/nope", {"text": ""}, "text"),
        ("get", "/v1/groups/user:alice/diff?from=a&to=1", None, "from"),
    ],
)
def test_malformed_requests_are_4xx_naming_the_field(stack, method, path, body, field) -> None:
    answer = getattr(client(stack), method)(path, **({"json": body} if body is not None else {}))
    assert 400 <= answer.status_code < 500, answer.text
    assert field in answer.text
    assert "Traceback" not in answer.text


def test_rebuilt_index_answers_the_same(stack) -> None:
    send(stack, [interaction("fr-1", user="frank", query="how do I rotate keys?",
                             response="call rotate_key"),
                 feedback("fr-r1", "rating", "fr-1", user="frank", value=1)] +
         [feedback(f"fr-r{n}", "rating", "fr-1", user="frank", value=1) for n in range(2, 7)])
    teach(stack, "frank", "mention the audit log when rotating keys")
    wait_rule(stack, "user:frank", "audit")
    request = {"user_id": "frank", "query": "rotate keys"}
    before = context(stack, **request)
    stack["api"].stop()
    shutil.rmtree(Path(stack["env"]["LEARNLOOP_DATA_DIR"]) / "vectors")
    env = {**os.environ, **stack["env"]}
    result = subprocess.run([sys.executable, "-m", "learnloop", "rebuild-index"], env=env,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rebuilt = orjson.loads(result.stdout.splitlines()[-1])
    assert rebuilt["indexed"] >= 1
    store = open_store(None, None, Path(stack["env"]["LEARNLOOP_DATA_DIR"]), 10)
    try:
        assert asyncio.run(store.count("memory")) == rebuilt["indexed"]
    finally:
        asyncio.run(store.close())
    stack["api"] = ApiProcess(stack["env"], stack["tmp"] / "api2.log").start()
    stack["restarted"] = stack["api"]
    after = context(stack, **request)
    assert after == before
