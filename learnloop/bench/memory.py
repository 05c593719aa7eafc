"""Worker memory with many groups, and how costs grow when groups and events grow 10x.

On a fresh ``learnloop up``, users are added in two phases: first a tenth of
them, then the rest (so groups and events both grow 10x between the two
measurements). Every user sends an interaction and a rating, and one in ten an
explanation (a ``user:`` rule, so memory versions are written too); users are in
teams of 10 and orgs of 100. After each phase, once the pipeline has drained, the
worker's resident memory (VmRSS of the ``learnloop worker`` process), the time
from the first event sent to drained, and ``/v1/context`` latency over a sample
of users are recorded.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from learnloop.bench.stack import UpStack
from learnloop.producer import EventProducer

Progress = Callable[[str, int, int], None]
BATCH = 2000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def user_events(n: int, stamp: str) -> list[dict[str, Any]]:
    base = {
        "timestamp": stamp,
        "user_id": f"m{n}",
        "team_id": f"mt{n // 10}",
        "org_id": f"mo{n // 100}",
    }
    iid = f"mem-{n}-i"
    events: list[dict[str, Any]] = [
        {
            "event_id": iid,
            "type": "interaction",
            **base,
            "query": f"how do I rotate key {n % 50}?",
            "response": "Call rotate_key with the old key id.",
        },
        {
            "event_id": f"mem-{n}-r",
            "type": "rating",
            **base,
            "interaction_id": iid,
            "value": 1 if n % 3 else -1,
        },
    ]
    if n % 10 == 0:
        events.append(
            {
                "event_id": f"mem-{n}-x",
                "type": "explanation",
                **base,
                "interaction_id": iid,
                "text": f"use the v{n % 7 + 2} key rotation endpoint",
            }
        )
    return events


async def _send(bootstrap: str, topic: str, events: list[dict[str, Any]], step: Progress) -> None:
    async with EventProducer(bootstrap, topic, linger_ms=20) as producer:
        for start in range(0, len(events), BATCH):
            await producer.emit_many(events[start : start + BATCH])
            step("sending", min(start + BATCH, len(events)), len(events))


def _context_p50(url: str, users: list[int], requests: int) -> float:
    samples = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for k in range(requests):
            n = users[(k * 7919) % len(users)]
            body = {
                "user_id": f"m{n}",
                "team_id": f"mt{n // 10}",
                "org_id": f"mo{n // 100}",
                "query": "rotate the key",
            }
            started = time.perf_counter()
            http.post("/v1/context", json=body).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def run_memory(
    workdir: Path,
    users: int,
    topic: str,
    config: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    step = progress or (lambda _d, _i, _n: None)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    phases = [max(1, users // 10), users]
    rows: list[dict[str, Any]] = []
    with UpStack(workdir, config=config) as stack:
        pid = stack.worker_pid
        baseline = rss_mb(pid)
        sent = 0
        done = 0
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for phase, upto in enumerate(phases):
                events = [e for n in range(done, upto) for e in user_events(n, stamp)]
                started = time.perf_counter()
                label = f"phase {phase + 1}: sending"

                def sending(_d: str, i: int, n: int, label: str = label) -> None:
                    step(label, i, n)

                asyncio.run(_send(stack.bootstrap, topic, events, sending))
                sent += len(events)
                step(
                    f"phase {phase + 1}: waiting for the pipeline to drain",
                    len(events),
                    len(events),
                )
                stack.drained(sent, timeout_s=1800)
                elapsed = time.perf_counter() - started
                total_groups = int(
                    stack.http.get("/v1/groups", params={"limit": 1}).json()["total"]
                )
                rows.append(
                    {
                        "users": upto,
                        "groups": total_groups,
                        "events_total": sent,
                        "events_phase": len(events),
                        "phase_s": round(elapsed, 1),
                        "events_per_s": round(len(events) / elapsed, 1),
                        "worker_rss_mb": round(rss_mb(pid), 1),
                        "worker_peak_rss_mb": round(peak[0], 1),
                        "context_p50_ms": round(_context_p50(stack.url, list(range(upto)), 200), 2),
                    }
                )
                done = upto
        finally:
            stop.set()
            sampler.join(2)
        ready_s = stack.ready_s
    return {
        "benchmark": "memory",
        "ready_s": round(ready_s, 1),
        "worker_rss_idle_mb": round(baseline, 1),
        "phases": rows,
    }
