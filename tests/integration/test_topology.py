"""Issue 4's topology on the real embedded broker with real ``learnloop worker`` processes.

Derived groups from metadata (and a bad rule stopping start-up), an event produced
with the wrong key forwarded to its interaction's partition and joined there,
feedback before its interaction (joined when it comes; processed or dead-lettered
when it never does), a team group triggering exactly when its policy says, and one
loud user unable to trigger a team rule alone.

Workers take ~8 s to start, so one worker per distinct configuration is started
for the whole module, all at once; each test uses its own users, teams and
interaction ids so the tests sharing a worker never see each other's groups.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from learnloop.embedded.broker import EmbeddedBroker
from learnloop.settings import Settings, TopicNames
from learnloop.topics import ensure_topics
from schemas import EventCodec, from_json_event
from streams.signal_bundles import unbundle
from tests.conftest import WorkerProcess, read_group_states, read_records, unique_env, wait_until
from tests.factories import feedback, interaction
from tests.integration.streams_helpers import emit

pytestmark = pytest.mark.integration

PARTITIONS = 4
DERIVED_RULES = [
    {
        "name": "billing",
        "key": "path",
        "op": "glob",
        "value": "services/billing/**",
        "group": "path:billing",
    },
    {"name": "persona", "key": "persona", "op": "exists", "group": "persona:{value}"},
    {
        "name": "europe",
        "key": "region",
        "op": "in",
        "value": ["eu", "uk"],
        "group": "region:europe",
    },
]
EXPLICIT_KINDS = ("user:", "team:", "org:")


# --------------------------------------------------------------------------- stacks


@dataclass
class Stack:
    env: dict[str, str]
    worker: WorkerProcess

    @property
    def bootstrap(self) -> str:
        return self.env["LEARNLOOP_KAFKA_BOOTSTRAP"]

    def ready(self) -> Stack:
        self.worker.wait_ready()
        return self

    def emit(self, events: list[dict[str, Any]]) -> None:
        emit(self.bootstrap, self.env["LEARNLOOP_TOPICS__EVENTS"], events)

    def states(self) -> dict[str, Any]:
        return read_group_states(self.env)

    def triggers(self, group: str) -> list[dict[str, Any]]:
        records = read_records(self.bootstrap, self.env["LEARNLOOP_TOPICS__TRIGGERS"], PARTITIONS)
        return [orjson.loads(r.value) for r in records if r.key == group.encode()]


def _stack_env(broker: EmbeddedBroker, data_dir: Path, **extra: str) -> dict[str, str]:
    """Like the ``stack_env`` fixture, for a module-scoped worker."""
    return unique_env(broker, data_dir, LEARNLOOP_PARTITIONS=str(PARTITIONS), **extra)


def _topic_settings(env: dict[str, str]) -> Settings:
    prefix = "LEARNLOOP_TOPICS__"
    names = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    return Settings(
        kafka_bootstrap=env["LEARNLOOP_KAFKA_BOOTSTRAP"],
        partitions=PARTITIONS,
        topics=TopicNames(**names),
    )


@pytest.fixture(scope="module")
def stacks(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Stack]]:
    """One worker per configuration, started together (tests wait for the one they use).

    ``main``: derived-group rules, and feedback waits 30 s for its interaction.
    ``orphan_process`` / ``orphan_dead``: feedback waits 1 s, then is processed
    without its interaction / dead-lettered.
    """
    configs = {
        "main": {
            "LEARNLOOP_DERIVED_GROUPS": orjson.dumps(DERIVED_RULES).decode(),
            "LEARNLOOP_JOIN_WAIT_S": "30",
        },
        "orphan_process": {"LEARNLOOP_JOIN_WAIT_S": "1", "LEARNLOOP_ORPHAN_FEEDBACK": "process"},
        "orphan_dead": {"LEARNLOOP_JOIN_WAIT_S": "1", "LEARNLOOP_ORPHAN_FEEDBACK": "dead_letter"},
    }
    started: dict[str, Stack] = {}
    try:
        for name, extra in configs.items():
            base = tmp_path_factory.mktemp(f"topology-{name}")
            env = _stack_env(broker, base / "data", **extra)
            # as `learnloop up` does before it starts its worker (`learnloop worker` does not)
            asyncio.run(ensure_topics(broker.bootstrap, _topic_settings(env)))
            started[name] = Stack(env, WorkerProcess(env, base / "worker.log").start())
        yield started
    finally:
        for stack in started.values():
            stack.worker.stop()


# --------------------------------------------------------------------------- helpers


def encode(event: dict[str, Any]) -> bytes:
    record, errors = from_json_event(event)
    assert record is not None, errors
    return EventCodec().encode(record)


async def _send_raw(
    bootstrap: str, topic: str, sends: list[tuple[bytes | None, bytes, int]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False)
    await producer.start()
    try:
        for key, value, partition in sends:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


def murmur2_partition(key: str) -> int:
    everything = list(range(PARTITIONS))
    return int(DefaultPartitioner()(key.encode(), everything, everything))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def counts_of(states: dict[str, Any], group: str) -> dict[str, int]:
    state = states.get(group)
    return dict(state["counts"]) if state else {}


def explanations(trigger: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trigger["evidence"] if e["type"] == "explanation"]


def pair(
    n: str, user: str, team: str, org: str, text: str, **interaction_extra: Any
) -> list[dict[str, Any]]:
    """An interaction and an explanation of it, in that order."""
    iid = f"i-{n}"
    return [
        interaction(iid, user=user, team=team, org=org, **interaction_extra),
        feedback(f"x-{n}", "explanation", iid, user=user, team=team, org=org, text=text),
    ]


# --------------------------------------------------------------------------- derived groups


def test_derived_groups_from_metadata(stacks: dict[str, Stack]) -> None:
    stack = stacks["main"].ready()
    user, team, org, n = unique("u"), unique("t"), unique("o"), unique("dg")
    billing_analyst = {"path": "services/billing/api.py", "persona": "analyst"}

    def with_meta(event: dict[str, Any], metadata: dict[str, str]) -> dict[str, Any]:
        return {**event, "metadata": metadata}

    who = {"user": user, "team": team, "org": org}
    events = [
        with_meta(interaction(f"{n}-1", **who), billing_analyst),
        with_meta(feedback(f"{n}-r1", "rating", f"{n}-1", **who, value=-1), billing_analyst),
        with_meta(
            interaction(f"{n}-2", **who),
            {"path": "services/billing/jobs/nightly.py", "persona": "analyst", "region": "eu"},
        ),
        with_meta(
            interaction(f"{n}-3", **who), {"path": "services/search/api.py", "persona": "dev"}
        ),
        with_meta(interaction(f"{n}-4", **who), {"path": "billing/services/x.py", "region": "us"}),
        interaction(f"{n}-5", **who),  # no metadata: explicit groups only
    ]
    stack.emit(events)
    expected = {
        "path:billing": {"interaction": 2, "rating": 1},
        "persona:analyst": {"interaction": 2, "rating": 1},
        "persona:dev": {"interaction": 1},
        "region:europe": {"interaction": 1},
    }

    def derived() -> dict[str, dict[str, int]] | None:
        states = stack.states()
        if counts_of(states, f"user:{user}") != {"interaction": 5, "rating": 1}:
            return None  # not everything processed yet
        return {
            group: dict(state["counts"])
            for group, state in states.items()
            if group != "global" and not group.startswith(EXPLICIT_KINDS)
        }

    assert wait_until(derived, 30) == expected
    states = stack.states()
    assert states["path:billing"]["scope"] == "path"
    assert counts_of(states, f"team:{team}") == {"interaction": 5, "rating": 1}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        pytest.param(
            {"name": "by-path", "key": "path", "op": "regex", "value": ".*", "group": "path:x"},
            ["derived_groups.0.op", "rule by-path", "'regex'", "LEARNLOOP_DERIVED_GROUPS__0__OP"],
            id="unknown-operator",
        ),
        pytest.param(
            {"name": "eu-only", "key": "region", "op": "in", "value": "eu", "group": "region:eu"},
            ["derived_groups.0", "rule eu-only", "op 'in' needs a list value"],
            id="in-without-list",
        ),
    ],
)
def test_invalid_derived_rule_stops_the_worker_at_start(
    stack_env: dict[str, str], workers: Any, rule: dict[str, Any], expected: list[str]
) -> None:
    stack_env["LEARNLOOP_DERIVED_GROUPS"] = orjson.dumps([rule]).decode()
    worker = workers("bad-rule")
    assert worker.process is not None
    code = worker.process.wait(60)
    assert code != 0
    log = " ".join(worker.log_path.read_text().split())  # the console wraps long lines
    for text in expected:
        assert text in log, log[-2000:]
    assert "worker starting" not in log


# --------------------------------------------------------------------------- join


def test_wrongly_keyed_feedback_is_forwarded_to_its_interaction_and_joined(
    stacks: dict[str, Stack],
) -> None:
    stack = stacks["main"].ready()
    topic = stack.env["LEARNLOOP_TOPICS__EVENTS"]
    team, org = unique("t"), unique("o")
    by_id, no_key = unique("u"), unique("u")
    iid = unique("i")
    home = murmur2_partition(iid)
    query, response = f"query {iid}", f"response {iid}"
    stack.emit([interaction(iid, user=by_id, team=team, org=org, query=query, response=response)])
    wrong_key = encode(feedback(f"{iid}-x1", "explanation", iid, user=by_id, team=team, org=org))
    unkeyed = encode(feedback(f"{iid}-x2", "explanation", iid, user=no_key, team=team, org=org))
    # both land on partitions that are not the interaction's
    sends = [
        (f"{iid}-x1".encode(), wrong_key, (home + 1) % PARTITIONS),
        (None, unkeyed, (home + 2) % PARTITIONS),
    ]
    asyncio.run(_send_raw(stack.bootstrap, topic, sends))

    for user in (by_id, no_key):
        [trigger] = wait_until(lambda u=user: stack.triggers(f"user:{u}"), 30)
        [explanation] = explanations(trigger)
        assert (explanation["query"], explanation["response"]) == (query, response)

    # each was re-sent keyed by its interaction id, to the interaction's partition
    records = read_records(stack.bootstrap, topic, PARTITIONS)
    assert {r.partition for r in records if r.key == iid.encode()} == {home}
    for value in (wrong_key, unkeyed):
        copies = [r for r in records if r.value == value]
        assert {(r.key, r.partition) for r in copies if r.key == iid.encode()} == {
            (iid.encode(), home)
        }, [(r.key, r.partition) for r in copies]
    # ... and counted once, not once per hop
    states = stack.states()
    assert counts_of(states, f"team:{team}") == {"interaction": 1, "explanation": 2}
    assert counts_of(states, f"user:{no_key}") == {"explanation": 1}


def test_rightly_keyed_feedback_on_the_wrong_partition_is_forwarded(
    stacks: dict[str, Stack],
) -> None:
    stack = stacks["main"].ready()
    topic = stack.env["LEARNLOOP_TOPICS__EVENTS"]
    user, team, org = unique("u"), unique("t"), unique("o")
    iid = unique("i")
    home = murmur2_partition(iid)
    query, response = f"query {iid}", f"response {iid}"
    stack.emit([interaction(iid, user=user, team=team, org=org, query=query, response=response)])
    value = encode(feedback(f"{iid}-x", "explanation", iid, user=user, team=team, org=org))
    asyncio.run(_send_raw(stack.bootstrap, topic, [(iid.encode(), value, (home + 1) % 4)]))
    [trigger] = wait_until(lambda: stack.triggers(f"user:{user}"), 30)
    [explanation] = explanations(trigger)
    assert (explanation["query"], explanation["response"]) == (query, response)  # joined
    records = read_records(stack.bootstrap, topic, PARTITIONS)
    assert sorted(r.partition for r in records if r.value == value) == sorted(
        [home, (home + 1) % 4]
    )
    assert counts_of(stack.states(), f"user:{user}") == {"interaction": 1, "explanation": 1}


def test_feedback_before_its_interaction_waits_and_is_joined(stacks: dict[str, Stack]) -> None:
    stack = stacks["main"].ready()
    user, team, org = unique("u"), unique("t"), unique("o")
    iid = unique("i")
    query, response = f"query {iid}", f"response {iid}"
    consumed_before = stack.worker.metric("learnloop_events_in_total")
    stack.emit([feedback(f"{iid}-x", "explanation", iid, user=user, team=team, org=org)])
    wait_until(lambda: stack.worker.metric("learnloop_events_in_total") > consumed_before, 20, 0.2)
    time.sleep(1.5)  # had it been processed without its interaction, it would show by now
    assert stack.triggers(f"user:{user}") == []
    assert f"user:{user}" not in stack.states()

    stack.emit([interaction(iid, user=user, team=team, org=org, query=query, response=response)])
    [trigger] = wait_until(lambda: stack.triggers(f"user:{user}"), 30)
    [explanation] = explanations(trigger)
    assert explanation["event_id"] == f"{iid}-x"
    assert (explanation["query"], explanation["response"]) == (query, response)
    assert counts_of(stack.states(), f"user:{user}") == {"interaction": 1, "explanation": 1}


def test_feedback_whose_interaction_never_comes_is_processed_after_the_wait(
    stacks: dict[str, Stack],
) -> None:
    stack = stacks["orphan_process"].ready()
    user, team, org = unique("u"), unique("t"), unique("o")
    iid = unique("never")
    started = time.monotonic()
    stack.emit([feedback(f"{iid}-x", "explanation", iid, user=user, team=team, org=org)])
    [trigger] = wait_until(lambda: stack.triggers(f"user:{user}"), 30, 0.2)
    assert time.monotonic() - started >= 1.0  # LEARNLOOP_JOIN_WAIT_S=1
    [explanation] = explanations(trigger)
    assert explanation["event_id"] == f"{iid}-x"
    assert (explanation["query"], explanation["response"]) == (None, None)
    states = stack.states()
    assert counts_of(states, f"user:{user}") == {"explanation": 1}
    assert counts_of(states, f"team:{team}") == {"explanation": 1}
    # released by a marker the worker appended to the events topic, at the marker's origin
    events = read_records(stack.bootstrap, stack.env["LEARNLOOP_TOPICS__EVENTS"], PARTITIONS)
    [marker] = [r for r in events if r.key == iid.encode() and r.headers]
    assert dict(marker.headers) == {"learnloop.control": b"release"}
    assert orjson.loads(marker.value) == {"interaction_id": iid, "event_ids": [f"{iid}-x"]}
    signals = read_records(stack.bootstrap, stack.env["LEARNLOOP_TOPICS__SIGNALS"], PARTITIONS)
    released = [s for r in signals if iid.encode() in r.value for s in unbundle(r.value)]
    origins = [s["origin"] for s in released if s.get("event_id") == f"{iid}-x"]
    assert len(origins) >= 4  # user, team, org, global
    assert {tuple(o[:2]) for o in origins} == {(marker.partition, marker.offset)}


def test_feedback_whose_interaction_never_comes_is_dead_lettered(
    stacks: dict[str, Stack],
) -> None:
    stack = stacks["orphan_dead"].ready()
    user, team, org = unique("u"), unique("t"), unique("o")
    iid = unique("never")
    event_id = f"{iid}-x"
    started = time.monotonic()
    stack.emit([feedback(event_id, "explanation", iid, user=user, team=team, org=org)])

    def dead() -> list[Any]:
        records = read_records(stack.bootstrap, stack.env["LEARNLOOP_TOPICS__DEAD_LETTERS"], 1)
        return [r for r in records if r.key == event_id.encode()]

    [record] = wait_until(dead, 30, 0.2)
    assert time.monotonic() - started >= 1.0
    headers = dict(record.headers)
    assert headers["learnloop.reason"] == b"interaction_missing"
    assert iid in headers["learnloop.detail"].decode()
    assert orjson.loads(record.value)["event_id"] == event_id
    assert stack.worker.metric("learnloop_dead_letters_total") >= 1
    # dead-lettered instead of processed: no group saw it
    assert stack.triggers(f"user:{user}") == []
    states = stack.states()
    assert f"user:{user}" not in states
    assert f"team:{team}" not in states


# --------------------------------------------------------------------------- triggers


def test_team_group_triggers_exactly_when_its_policy_says(stacks: dict[str, Stack]) -> None:
    """team: min_users=3, min_evidence=3, one user's share capped at half of it."""
    stack = stacks["main"].ready()
    team, org = unique("team"), unique("o")
    first, second, third = unique("a"), unique("b"), unique("c")
    text = "wrong: call the billing v2 API, v1 is deprecated"
    # two users, two explanations each: capped support 2 + 2 >= 3, but only 2 users
    stack.emit(
        [
            event
            for n, user in enumerate((first, first, second, second))
            for event in pair(f"{team}-{n}", user, team, org, text)
        ]
    )
    wait_until(
        lambda: (
            counts_of(stack.states(), f"team:{team}").get("explanation") == 4
            and stack.triggers(f"user:{first}")
            and stack.triggers(f"user:{second}")
        ),
        30,
    )
    assert stack.triggers(f"team:{team}") == []

    stack.emit(pair(f"{team}-third", third, team, org, text))
    wait_until(lambda: stack.triggers(f"team:{team}"), 30)
    time.sleep(2)  # a second trigger would show by now
    [trigger] = stack.triggers(f"team:{team}")
    assert trigger["reason"] == "evidence"
    assert trigger["scope"] == "team"
    assert {e["user_id"] for e in explanations(trigger)} == {first, second, third}
    assert counts_of(stack.states(), f"team:{team}") == {"interaction": 5, "explanation": 5}


def test_one_loud_user_cannot_trigger_a_team_rule_alone(stacks: dict[str, Stack]) -> None:
    stack = stacks["main"].ready()
    team, org, loud = unique("loud-team"), unique("o"), unique("loud")
    stack.emit(
        [
            event
            for n in range(20)
            for event in pair(f"{team}-{n}", loud, team, org, f"use the v2 API, not v1 ({n})")
        ]
    )
    wait_until(
        lambda: (
            counts_of(stack.states(), f"team:{team}").get("explanation") == 20
            and stack.triggers(f"user:{loud}")
        ),
        30,
    )
    assert stack.triggers(f"team:{team}") == []
    state = stack.states()[f"team:{team}"]
    assert state["distinct_contributors"] == 1
    assert state["triggers_fired"] == 0


def test_another_orgs_signals_are_dropped_and_said_so(stacks: dict[str, Stack]) -> None:
    """A team id reused by a second org: its feedback never folds into the first org's
    group, and the worker says so in a metric and a warning naming the owner."""
    stack = stacks["main"].ready()
    team, first, second = unique("shared-team"), unique("org-a"), unique("org-b")
    before = stack.worker.metric("learnloop_tenant_conflicts_total", scope="team")
    stack.emit(pair(f"{team}-a", unique("ann"), team, first, "answer in German"))
    wait_until(lambda: counts_of(stack.states(), f"team:{team}").get("explanation") == 1, 30)
    stack.emit(pair(f"{team}-b", unique("bo"), team, second, "answer in French"))
    wait_until(
        lambda: stack.worker.metric("learnloop_tenant_conflicts_total", scope="team")
        >= before + 2,
        30,
    )
    state = stack.states()[f"team:{team}"]
    assert state["org"] == first and state["counts"] == {"interaction": 1, "explanation": 1}
    warnings = [
        orjson.loads(line)
        for line in stack.worker.log_path.read_text().splitlines()
        if f"team:{team}" in line and "another org" in line
    ]
    assert [w["owner_org"] for w in warnings] == [first]


# --------------------------------------------------------------------------- signal bundles


def test_a_bad_signal_in_a_bundle_is_dead_lettered_alone(stacks: dict[str, Stack]) -> None:
    """Signals travel many to a message: a bad one, or a message that is not JSON,
    is dead-lettered on its own and the good signals beside it still count."""
    stack = stacks["main"].ready()
    group = f"team:{unique('bundle')}"
    good = {
        "signal_id": f"{unique('r')}|{group}",
        "group": group,
        "origin": None,
        "event_id": unique("r"),
        "type": "rating",
        "timestamp": 1_764_057_600_000,
        "user_id": unique("u"),
        "org_id": None,
        "interaction_id": None,
        "joined": False,
        "query": None,
        "response": None,
        "payload": {"value": -1},
        "flags": [],
    }
    bad = {**good, "signal_id": "bad", "timestamp": "yesterday"}
    bundle = orjson.dumps({"signals": [bad, good]})
    partition = murmur2_partition(group)
    topic = stack.env["LEARNLOOP_TOPICS__SIGNALS"]
    asyncio.run(
        _send_raw(stack.bootstrap, topic, [(None, bundle, partition), (None, b"{nope", partition)])
    )
    wait_until(lambda: counts_of(stack.states(), group) == {"rating": 1}, 30, 0.2)

    def dead() -> list[Any] | None:
        records = read_records(stack.bootstrap, stack.env["LEARNLOOP_TOPICS__DEAD_LETTERS"], 1)
        found = [
            r
            for r in records
            if dict(r.headers)["learnloop.source"].decode().startswith(f"{topic}/{partition}/")
            and (r.value == b"{nope" or orjson.loads(r.value).get("signal_id") == "bad")
        ]
        return found if len(found) == 2 else None

    records = wait_until(dead, 30, 0.2)
    assert {dict(r.headers)["learnloop.reason"] for r in records} == {b"bad_signal"}
    details = sorted(dict(r.headers)["learnloop.detail"].decode() for r in records)
    assert details == ["JSONDecodeError", "field timestamp: expected int"]
