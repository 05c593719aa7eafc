"""Fine-tuning export on the real embedded broker: formats, isolation, forgetting, memory.

One dataset is emitted for the module: team ``search`` in org ``acme`` (which
claims the group by being first), the same team name in org ``beta`` (a foreign
tenant), other teams of both orgs, a user who was forgotten through a
``forget_user`` command, personal data in the texts, feedback sent before its
interaction, a resent event and feedback on an unknown interaction. Each export
is loaded back and validated against the trainers' schemas
(``tests/unit/test_export_format.py``).
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import sqlite3
import threading
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from learnloop.embedded.broker import EmbeddedBroker
from learnloop.export import ExportError, ExportSummary, core, export
from learnloop.settings import Settings, TopicNames
from tests.factories import feedback, interaction
from tests.integration.streams_helpers import emit
from tests.unit.test_export_format import SCHEMAS, validate_rows

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
PHONE_DIGITS = ("415 555 0100", "4155550100", "+44 20 7946 0958")
FOREIGN_MARKERS = ("BETA", "MALLORY", "INFRA", "OPS")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ms(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp() * 1000)


def ask(iid: str, user: str, query: str, response: str, minute: float, **kw: Any) -> dict[str, Any]:
    return interaction(iid, user=user, query=query, response=response, timestamp=at(minute), **kw)


def rate(eid: str, iid: str, user: str, minute: float, **kw: Any) -> dict[str, Any]:
    return feedback(eid, "rating", iid, user=user, timestamp=at(minute), **kw)


def edit(eid: str, iid: str, user: str, minute: float, **kw: Any) -> dict[str, Any]:
    return feedback(eid, "edit", iid, user=user, timestamp=at(minute), **kw)


def dataset() -> list[dict[str, Any]]:
    events = [
        # i1: an edit, sent before its interaction; personal data on both sides
        edit(
            "e1",
            "i1",
            "alice",
            2,
            original="use the v1 client",
            edited="use the v2 client; questions to +1 415 555 0100",
        ),
        ask("i1", "alice", "How do I call billing? I'm alice@example.com", "use the v1 client", 1),
        # i2 (+1) and i3 (-1): the same question, normalised -> an exact DPO pair
        ask("i2", "bob", "how do I rotate the deploy token", "run `rotate --all` then redeploy", 3),
        rate("r2", "i2", "bob", 4, value=1),
        rate("r2", "i2", "bob", 4, value=1),  # a producer retry: same event id
        ask("i3", "carol", "How do I rotate the deploy token?", "delete the token and hope", 5),
        rate("r3", "i3", "carol", 6, value=-1),
        # i4 (9/10) and i5 (1/5): similar questions -> a DPO pair through the embedding
        ask(
            "i4",
            "alice",
            "page the on-call engineer for the search cluster",
            "use the search pager key",
            7,
        ),
        rate("r4", "i4", "alice", 8, value=None, score=9, scale=10),
        ask("i5", "bob", "page on-call engineer of search cluster please", "email someone", 9),
        rate("r5", "i5", "bob", 10, value=None, score=1, scale=5),
        # i6: rated by three people, two up and one down (agreement 2/3)
        ask("i6", "carol", "what is the refund policy", "30 days, mail refunds@shop.example", 11),
        rate("r6a", "i6", "alice", 12, value=1),
        rate("r6b", "i6", "bob", 12, value=1),
        rate("r6c", "i6", "carol", 12, value=-1),
        # i7: a neutral 3/5
        ask("i7", "dave", "summarise the incident", "it was fine", 13),
        rate("r7", "i7", "dave", 14, value=None, score=3, scale=5),
        # i8: three days later
        ask("i8", "alice", "how do I export my data", "call +44 20 7946 0958", 3 * 1440),
        rate("r8", "i8", "alice", 3 * 1440 + 1, value=1),
        # feedback on an interaction nobody sent; kinds the export does not use
        rate("r9", "i-missing", "dave", 15, value=1),
        feedback("x1", "explanation", "i3", user="carol", timestamp=at(6), text="wrong"),
        feedback("g1", "engagement", "i2", user="bob", timestamp=at(6)),
        # the forgotten user: their interaction, edit and rating; and alice rating it
        ask("i10", "mallory", "MALLORY secret question", "MALLORY secret answer", 16),
        edit("e10", "i10", "mallory", 17, original="MALLORY secret answer", edited="MALLORY v2"),
        rate("r10", "i10", "mallory", 17, value=1),
        rate("r10b", "i10", "alice", 17, value=1),
        # another acme team
        ask("i30", "ivan", "INFRA question", "INFRA answer", 18, team="infra"),
        rate("r30", "i30", "ivan", 19, value=1, team="infra"),
    ]
    beta = [
        # the same team name in another tenant, later: team:search stays acme's
        ask("i20", "zed", "BETA how do I call billing", "BETA use v1", 60, org="beta"),
        edit("e20", "i20", "zed", 61, org="beta", original="BETA use v1", edited="BETA use v2"),
        rate("r20", "i20", "zed", 61, org="beta", value=1),
        ask("i21", "yan", "OPS query", "OPS answer", 62, org="beta", team="ops"),
        rate("r21", "i21", "yan", 63, org="beta", team="ops", value=-1),
    ]
    return events + beta


async def _forget(bootstrap: str, topic: str, user: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        command = {
            "command_id": str(uuid.uuid4()),
            "type": "forget_user",
            "group": f"user:{user}",
            "user_id": user,
            "actor": "test",
            "created_ms": ms(100),
        }
        await producer.send_and_wait(topic, orjson.dumps(command), key=command["group"].encode())
        # an unrelated command and a record that is not JSON are ignored
        other = {**command, "command_id": "c2", "type": "reset", "user_id": "alice"}
        await producer.send_and_wait(topic, orjson.dumps(other), key=b"team:search")
        await producer.send_and_wait(topic, b"\x00not json", key=b"x")
    finally:
        await producer.stop()


def _settings(bootstrap: str, unique: str, **kw: Any) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        broker_true_end_offsets=True,
        topics=TopicNames(events=f"export-events-{unique}", commands=f"export-commands-{unique}"),
        **kw,
    )


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker) -> Settings:
    settings = _settings(broker.bootstrap, uuid.uuid4().hex[:10])
    emit(broker.bootstrap, settings.topics.events, dataset(), batch=7)
    asyncio.run(_forget(broker.bootstrap, settings.topics.commands, "mallory"))
    return settings


def run_export(
    settings: Settings, group: str, fmt: str, layout: str = "messages", **kw: Any
) -> tuple[list[dict[str, Any]], ExportSummary, bytes]:
    assert settings.kafka_bootstrap is not None
    out = io.BytesIO()
    summary = asyncio.run(
        export(settings, settings.kafka_bootstrap, group, fmt, out, layout=layout, **kw)  # type: ignore[arg-type]
    )
    data = out.getvalue()
    rows = validate_rows(data, fmt, layout)
    assert summary.written == len(rows)
    return rows, summary, data


def assert_clean(data: bytes, foreign: tuple[str, ...] = FOREIGN_MARKERS) -> None:
    text = data.decode()
    for marker in foreign:
        assert marker not in text, f"{marker} data leaked into the export"
    assert not EMAIL_RE.search(text), EMAIL_RE.search(text)
    for digits in PHONE_DIGITS:
        assert digits not in text


def prompts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        prompt = row.get("prompt") or row.get("messages") or row["input"]["messages"]
        out.append(prompt if isinstance(prompt, str) else prompt[0]["content"])
    return out


@pytest.mark.parametrize(("fmt", "layout"), sorted(SCHEMAS))
def test_every_format_and_layout_loads_with_the_trainer_schema(
    stack: Settings, fmt: str, layout: str
) -> None:
    _, summary, data = run_export(stack, "team:search", fmt, layout)
    assert_clean(data)
    assert summary.owner == "acme" and summary.forgotten_users == 1
    expected = {"sft": 5, "dpo": 3, "kto": 6}[fmt]
    assert summary.written == expected, summary.as_dict()
    skipped = summary.skipped
    # KTO reads no edits, so beta's edit is never indexed and never counted as foreign
    assert skipped["forgotten_user"] == 3 and skipped["other_tenant"] == (2 if fmt == "kto" else 3)
    assert skipped["other_group"] == 4 and skipped["duplicate"] == 1
    assert skipped["no_interaction"] >= 2  # i-missing; alice's rating of mallory's answer
    joined = data.decode()
    assert "[EMAIL]" in joined
    if fmt != "kto":
        assert "[PHONE]" in joined


def test_sft_rows(stack: Settings) -> None:
    rows, summary, _ = run_export(stack, "team:search", "sft", "prompt_completion")
    assert rows[0] == {
        "prompt": "How do I call billing? I'm [EMAIL]",
        "completion": "use the v2 client; questions to [PHONE]",
    }
    assert [r["completion"] for r in rows[1:]] == [
        "run `rotate --all` then redeploy",
        "use the search pager key",
        "30 days, mail [EMAIL]",
        "call [PHONE]",
    ]
    assert summary.sources == {"edit": 1, "rating": 4}
    assert summary.skipped["low_rating"] == 2 and summary.skipped["neutral_rating"] == 1


def test_dpo_pairs_edits_and_opposite_ratings_of_the_same_question(stack: Settings) -> None:
    rows, summary, _ = run_export(stack, "team:search", "dpo", "prompt_completion")
    assert rows == [
        {
            "prompt": "How do I call billing? I'm [EMAIL]",
            "chosen": "use the v2 client; questions to [PHONE]",
            "rejected": "use the v1 client",
        },
        {
            "prompt": "how do I rotate the deploy token",
            "chosen": "run `rotate --all` then redeploy",
            "rejected": "delete the token and hope",
        },
        {
            "prompt": "page the on-call engineer for the search cluster",
            "chosen": "use the search pager key",
            "rejected": "email someone",
        },
    ]
    assert summary.sources == {"edit": 1, "rating_pair": 2}
    assert summary.skipped["no_counterpart"] == 2  # i6 and i8 were liked, nothing disliked


def test_kto_labels(stack: Settings) -> None:
    rows, _, _ = run_export(stack, "team:search", "kto", "prompt_completion")
    assert [(r["prompt"][:20], r["label"]) for r in rows] == [
        ("how do I rotate the ", True),
        ("How do I rotate the ", False),
        ("page the on-call eng", True),
        ("page on-call enginee", False),
        ("what is the refund p", True),
        ("how do I export my d", True),
    ]
    assert all(isinstance(r["label"], bool) for r in rows)


def test_time_range_and_agreement_filters(stack: Settings) -> None:
    _, summary, _ = run_export(stack, "team:search", "sft", min_agreement=0.8)
    assert summary.written == 4 and summary.skipped["ratings_disagree"] == 1
    rows, summary, _ = run_export(stack, "team:search", "sft", until_ms=ms(1440))
    assert summary.written == 4 and summary.skipped["outside_time_range"] >= 1
    assert "how do I export my data" not in prompts(rows)
    rows, _, _ = run_export(stack, "team:search", "kto", since_ms=ms(1440))
    assert prompts(rows) == ["how do I export my data"]
    with pytest.raises(ExportError):
        run_export(stack, "team:search", "sft", since_ms=ms(10), until_ms=ms(5))


def test_other_tenants_and_groups_see_only_their_own(stack: Settings) -> None:
    rows, summary, data = run_export(stack, "org:beta", "sft")
    assert summary.owner == "beta"
    assert prompts(rows) == ["BETA how do I call billing"]  # the edit; its rating superseded
    assert "acme" not in data.decode() and "alice" not in data.decode()
    rows, summary, data = run_export(stack, "team:infra", "kto")
    assert prompts(rows) == ["INFRA question"]
    rows, summary, data = run_export(stack, "org:acme", "kto", "prompt_completion")
    assert "INFRA question" in prompts(rows)
    assert_clean(data, ("BETA", "MALLORY", "OPS"))
    rows, summary, _ = run_export(stack, "user:mallory", "sft")
    assert rows == [] and summary.skipped["forgotten_user"] == 3


def test_writes_a_file_atomically_and_reports_progress(stack: Settings, tmp_path: Path) -> None:
    assert stack.kafka_bootstrap is not None
    seen: list[int] = []
    totals: list[int] = []
    target = tmp_path / "dpo.jsonl"
    summary = asyncio.run(
        export(
            stack,
            stack.kafka_bootstrap,
            "team:search",
            "dpo",
            target,
            layout="openai",
            progress=seen.append,
            on_total=totals.append,
        )
    )
    validate_rows(target.read_bytes(), "dpo", "openai")
    assert not (tmp_path / "dpo.jsonl.part").exists()
    assert summary.written == 3
    assert totals == [len(dataset())]
    assert seen and seen == sorted(seen) and seen[-1] == totals[0] == summary.events_read


def test_an_empty_or_missing_topic_exports_nothing(broker: EmbeddedBroker) -> None:
    settings = _settings(broker.bootstrap, uuid.uuid4().hex[:10])
    out = io.BytesIO()
    summary = asyncio.run(export(settings, broker.bootstrap, "global", "sft", out))
    assert summary.written == 0 and summary.events_read == 0 and out.getvalue() == b""


def test_cancelling_stops_the_write_pass_before_removing_its_index(
    stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    seen: dict[str, Any] = {}

    def slow_write(index: Any, *args: Any) -> None:
        stop = args[-1]
        seen["index"] = index
        started.set()
        assert stop.wait(30), "the export was not told to stop"
        index.db.execute("SELECT count(*) FROM feedback").fetchone()  # still open: not closed
        raise core._Stopped

    monkeypatch.setattr(core, "_write_out", slow_write)

    async def run() -> None:
        assert stack.kafka_bootstrap is not None
        task = asyncio.create_task(
            export(stack, stack.kafka_bootstrap, "team:search", "sft", io.BytesIO())
        )
        assert await asyncio.to_thread(started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    with pytest.raises(sqlite3.ProgrammingError):  # closed once the thread had stopped
        seen["index"].db.execute("SELECT 1")


# --- constant memory ---------------------------------------------------------------------------

TEMPLATES = [
    f"how do I {verb} the {thing}"
    for verb in ("call", "rotate", "deploy", "debug", "scale")
    for thing in ("billing api", "search index", "deploy token", "cache")
]
REGIONS = ("north", "south", "east", "west", "central", "alpha", "beta", "gamma", "delta", "omega")


def bulk(start: int, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` events: interactions with a rating (60%) or an edit (20%), and PII."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    k = start
    while len(events) < count:
        user, iid = f"u{k % 40}", f"m{k}"
        query = f"{TEMPLATES[k % 20]} in {REGIONS[(k // 20) % 10]}? I'm user{k % 9}@example.com"
        response = f"answer {k % 7}: see the runbook"
        events.append(ask(iid, user, query, response, k / 100))
        roll = rng.random()
        if roll < 0.6:
            events.append(rate(f"r{k}", iid, user, k / 100, value=rng.choice([1, -1])))
        elif roll < 0.8:
            events.append(edit(f"e{k}", iid, user, k / 100, original=response, edited="call 555"))
        k += 1
    return events[:count]


def traced_peak(settings: Settings, out: Path) -> tuple[int, ExportSummary]:
    assert settings.kafka_bootstrap is not None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        summary = asyncio.run(export(settings, settings.kafka_bootstrap, "team:search", "dpo", out))
        return tracemalloc.get_traced_memory()[1], summary
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_when_the_dataset_doubles(broker: EmbeddedBroker, tmp_path: Path) -> None:
    started = time.monotonic()
    settings = _settings(broker.bootstrap, uuid.uuid4().hex[:10])
    out = tmp_path / "dpo.jsonl"
    emit(broker.bootstrap, settings.topics.events, bulk(0, 25_000, 1), batch=1000)
    asyncio.run(export(settings, broker.bootstrap, "team:search", "dpo", out))  # warm caches
    small, first = traced_peak(settings, out)
    emit(broker.bootstrap, settings.topics.events, bulk(100_000, 25_000, 2), batch=1000)
    large, second = traced_peak(settings, out)
    assert first.events_read == 25_000 and second.events_read == 50_000
    assert second.written > 1.8 * first.written > 5_000
    assert second.sources["rating_pair"] > 0 and second.sources["edit"] > 0
    print(f"peak traced memory: {small / 1e6:.1f} MB at 25k events, {large / 1e6:.1f} MB at 50k")
    assert large / small < 1.3, (small, large)
    assert large < 16 * 1024 * 1024
    assert_clean(out.read_bytes())
    assert time.monotonic() - started < 60
