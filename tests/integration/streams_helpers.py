"""Event streams with known per-group counts, for the pipeline tests."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

from learnloop.producer import EventProducer
from processors.groups import resolve_groups
from tests.factories import feedback, interaction


def make_stream(n_interactions: int, seed: int = 7) -> list[dict[str, Any]]:
    """Interactions with ratings, explanations and edits from 20 users in 4 teams.

    Some feedback is sent before its interaction and some event ids are resent,
    as real producers do.
    """
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(n_interactions):
        user = f"u{rng.randrange(20)}"
        team = f"t{int(user[1:]) % 4}"
        iid = f"i{n}"
        batch = [interaction(iid, user=user, team=team, org="acme")]
        batch.append(
            feedback(f"r{n}", "rating", iid, user=user, team=team, value=rng.choice([1, -1]))
        )
        if rng.random() < 0.3:
            batch.append(
                feedback(
                    f"x{n}",
                    "explanation",
                    iid,
                    user=user,
                    team=team,
                    text=f"please prefer the v2 API ({n})",
                )
            )
        if rng.random() < 0.1:
            batch.insert(0, feedback(f"e{n}", "edit", iid, user=user, team=team))  # early
        if rng.random() < 0.05:
            batch.append(dict(batch[-1]))  # a producer retry: same event id again
        events.extend(batch)
    return events


def expected_counts(events: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    seen: set[str] = set()
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        for group in resolve_groups(
            event["user_id"], event.get("team_id"), event.get("org_id"), {}, ()
        ):
            counts[group][event["type"]] += 1
    return counts


def emit(bootstrap: str, topic: str, events: list[dict[str, Any]], batch: int = 200) -> None:
    async def run() -> None:
        async with EventProducer(bootstrap, topic) as producer:
            for start in range(0, len(events), batch):
                await producer.emit_many(events[start : start + batch])

    asyncio.run(run())


def actual_counts(states: dict[str, Any]) -> dict[str, Counter[str]]:
    return {group: Counter(state["counts"]) for group, state in states.items()}


def missing_signals(env: dict[str, str], events: list[dict[str, Any]], group: str) -> list[str]:
    """Where the events of ``group`` that never reached the signals topic are, for a report.

    For each (up to 10): the event, its position in the events topic, and what the
    join slot of its interaction holds (was it seen, or is it still pending?).
    """
    from learnloop.api.group_view import changelog_topic
    from tests.conftest import read_records, read_table

    bootstrap, partitions = env["LEARNLOOP_KAFKA_BOOTSTRAP"], int(env["LEARNLOOP_PARTITIONS"])
    sent = {
        signal["event_id"]
        for record in read_records(bootstrap, env["LEARNLOOP_TOPICS__SIGNALS"], partitions)
        for signal in _signals_of(record.value)
        if isinstance(signal, dict) and signal.get("group") == group
    }
    wanted = {
        e["event_id"]
        for e in events
        if group in resolve_groups(e["user_id"], e.get("team_id"), e.get("org_id"), {}, ())
    }
    missing = sorted(wanted - sent)
    positions: dict[str, str] = {}
    for record in read_records(bootstrap, env["LEARNLOOP_TOPICS__EVENTS"], partitions):
        for event_id in missing:
            if event_id.encode() in record.value:
                positions.setdefault(event_id, f"{record.partition}/{record.offset}")
    slots_topic = changelog_topic(env["LEARNLOOP_APP_ID"], "join-slots")
    slots = read_table(bootstrap, slots_topic, partitions)
    by_id = {e["event_id"]: e for e in events}
    report = []
    for event_id in missing[:10]:
        event = by_id[event_id]
        stored = slots.get(event.get("interaction_id") or event_id)
        slot = stored[1] if stored else None
        state = (
            "no slot"
            if slot is None
            else f"seen={event_id in slot['seen']} "
            f"pending={[p['event']['event_id'] for p in slot['pending']]} "
            f"interaction={slot['interaction'] is not None}"
        )
        report.append(f"{event_id} ({event['type']}) at {positions.get(event_id)}: {state}")
    return [f"{len(missing)} missing", *report]


def signals_in_topic(env: dict[str, str], groups: set[str]) -> dict[str, Counter[str]]:
    """Distinct events per group and kind that the join put on the signals topic.

    When a group's counts come out short, this tells which stage lost them: if the
    signals are all here, aggregation dropped some; if not, the join never sent them.
    """
    from tests.conftest import read_records

    seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for record in read_records(
        env["LEARNLOOP_KAFKA_BOOTSTRAP"],
        env["LEARNLOOP_TOPICS__SIGNALS"],
        int(env["LEARNLOOP_PARTITIONS"]),
    ):
        for signal in _signals_of(record.value):
            if isinstance(signal, dict) and signal.get("group") in groups:
                seen[signal["group"]].add((signal["event_id"], signal["type"]))
    return {group: Counter(kind for _, kind in pairs) for group, pairs in seen.items()}


def _signals_of(value: bytes) -> list[Any]:
    """The signals in one message of the signals topic (a bundle, or a lone signal)."""
    from streams.signal_bundles import unbundle

    return unbundle(value)
