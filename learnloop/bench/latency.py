"""End-to-end learning latency: from the event that completes a trigger to the rule in context.

On a fresh ``learnloop up`` (offline synthesizer), each trial sends the events of
a trigger through Kafka with the producer client. The clock starts when the
broker confirms the *last* event needed (for a ``user:`` group the one
explanation; for a ``team:`` group the third distinct user's) and stops when a
``POST /v1/context`` for that user first returns a prefix containing the new
rule, polled every ``poll_ms``. Trials run one after another, so each measures
an idle pipeline: join, aggregation, synthesis, the versions topic and the API's
follower, plus the polling interval. Each trial also reads the new memory
version's ``created_ms`` (stamped by the worker's memory agent on the same
machine's clock) to split the time into the worker's part (event confirmed ->
version written: join, aggregation, synthesis and two topic hops) and the API's
part (version written -> visible in ``/v1/context``: the versions topic, the
API's follower and indexing, and the polling interval).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from learnloop.bench.stack import UpStack
from learnloop.producer import EventProducer

TIMEOUT_S = 60.0
Progress = Callable[[str, int, int], None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _trial_events(
    run: str, trial: int, scope: str
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(events before the clock starts, the completing event, a word unique to the rule)."""
    word = f"zeta{run}{scope[0]}{trial}"  # unique per trial: ids and users are never reused
    users = [f"lat{run}{scope[0]}-{trial}-{k}" for k in range(3 if scope == "team" else 1)]
    team = f"lat{run}-{trial}" if scope == "team" else None
    org = f"latorg{run}"
    events: list[dict[str, Any]] = []
    for k, user in enumerate(users):
        base = {"user_id": user, "org_id": org, **({"team_id": team} if team else {})}
        iid = f"{word}-i{k}"
        events.append(
            {
                "event_id": iid,
                "type": "interaction",
                "timestamp": _now(),
                **base,
                "query": "how do I call the billing API?",
                "response": "Use the legacy client.",
            }
        )
        events.append(
            {
                "event_id": f"{word}-x{k}",
                "type": "explanation",
                "timestamp": _now(),
                "interaction_id": iid,
                **base,
                "text": f"that's wrong, use the {word} client",
            }
        )
    return events[:-1], events[-1], word


async def _trial(
    producer: EventProducer,
    http: httpx.AsyncClient,
    run: str,
    trial: int,
    scope: str,
    poll_ms: int,
) -> tuple[float, float] | None:
    """(seconds to the rule in context, seconds of it spent in the worker), or None."""
    before, last, word = _trial_events(run, trial, scope)
    if before:
        await producer.emit_many(before)
    await asyncio.sleep(0.3)  # the interactions are joined before the clock starts
    await producer.emit(last)
    started = time.perf_counter()
    wall_ms = time.time() * 1000
    body = {"user_id": last["user_id"], "org_id": last["org_id"], "query": "billing"}
    if "team_id" in last:
        body["team_id"] = last["team_id"]
    # the rule must come from the group under test (the user's own rule does not count)
    tag = f"[team:{last['team_id']}]" if scope == "team" else f"[user:{last['user_id']}]"
    while time.perf_counter() - started < TIMEOUT_S:
        response = await http.post("/v1/context", json=body)
        if response.status_code == 200 and any(
            line.startswith(f"- {tag}") and word in line.lower()
            for line in response.json()["prefix"].splitlines()
        ):
            total = time.perf_counter() - started
            group = tag.strip("[]")
            version = response.json()["versions"][group]
            memory = await http.get(f"/v1/groups/{group}/memory", params={"version": version})
            worker_s = max(0.0, (memory.json()["created_ms"] - wall_ms) / 1000)
            return total, min(worker_s, total)
        await asyncio.sleep(poll_ms / 1000)
    return None


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarise(samples: list[tuple[float, float] | None]) -> dict[str, Any]:
    ok = [s[0] * 1000 for s in samples if s is not None]
    worker = [s[1] * 1000 for s in samples if s is not None]
    api = [(s[0] - s[1]) * 1000 for s in samples if s is not None]
    return {
        "trials": len(samples),
        "learned": len(ok),
        "timed_out": len(samples) - len(ok),
        "p50_ms": round(statistics.median(ok), 1) if ok else None,
        "p95_ms": round(_percentile(ok, 0.95), 1) if ok else None,
        "max_ms": round(max(ok), 1) if ok else None,
        "min_ms": round(min(ok), 1) if ok else None,
        "worker_p50_ms": round(statistics.median(worker), 1) if worker else None,
        "api_p50_ms": round(statistics.median(api), 1) if api else None,
    }


def run_latency(
    workdir: Path,
    trials: int,
    scopes: tuple[str, ...] = ("user", "team"),
    poll_ms: int = 20,
    config: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the trials on a fresh ``learnloop up``; the JSON-able report."""
    step = progress or (lambda _d, _i, _n: None)
    run = uuid.uuid4().hex[:4]
    results: dict[str, list[tuple[float, float] | None]] = {scope: [] for scope in scopes}

    async def main(stack: UpStack) -> None:
        async with (
            EventProducer(stack.bootstrap, linger_ms=0) as producer,
            httpx.AsyncClient(base_url=stack.url, timeout=10) as http,
        ):
            done = 0
            for scope in scopes:
                for trial in range(trials):
                    results[scope].append(await _trial(producer, http, run, trial, scope, poll_ms))
                    done += 1
                    step(f"{scope} trial {trial + 1}/{trials}", done, trials * len(scopes))

    with UpStack(workdir, config=config) as stack:
        step("pipeline ready", 0, trials * len(scopes))
        asyncio.run(main(stack))
        ready_s = stack.ready_s
    return {
        "benchmark": "latency",
        "synthesizer": "offline",
        "poll_ms": poll_ms,
        "ready_s": round(ready_s, 1),
        "scopes": {scope: summarise(samples) for scope, samples in results.items()},
        "samples_ms": {
            scope: [None if s is None else round(s[0] * 1000, 1) for s in samples]
            for scope, samples in results.items()
        },
    }
