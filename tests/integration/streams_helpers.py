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
