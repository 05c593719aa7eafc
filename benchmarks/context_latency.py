"""`/v1/context` latency (p50/p99) and requests/s for one API process.

Run: python benchmarks/context_latency.py --groups 1000 --items 200 [--json out.json]

Memory is written straight to the versions topic (the source of truth the API
reads), one snapshot per group with N items (rules and examples); then one
`learnloop api` process reads it, indexes it into the embedded store, and is
loaded by a client on loopback for a fixed number of requests at a fixed
concurrency. Latency is measured by the client, so it includes HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.settings import load_settings
from learnloop.topics import ensure_topics
from processors.memory import estimate_tokens, item_id
from streams.memory_agent import version_key

TOPICS = [
    "rotate keys",
    "billing API",
    "German answers",
    "deploy tool",
    "itineraries",
    "invoices",
    "spreadsheets",
    "quarterly report",
    "units",
    "tone",
]


def snapshot(group: str, n_items: int) -> dict[str, Any]:
    items = []
    for n in range(n_items):
        kind = "rule" if n % 4 == 0 else ("preferred_example" if n % 4 in (1, 2) else "correction")
        text = (
            f"{'Prefer' if kind == 'rule' else 'Example about'} {TOPICS[n % 10]} #{n} for {group}"
        )
        items.append(
            {
                "item_id": item_id(group, kind, text),
                "group": group,
                "kind": kind,
                "text": text,
                "status": "active",
                "strength": 1.0 + n % 7,
                "support": 1,
                "tokens": estimate_tokens(text),
                "created_ms": 0,
                "updated_ms": 0,
                "last_support_ms": 0,
                "query": f"question about {TOPICS[n % 10]}",
                "response": "an answer",
                "provenance": {
                    "event_ids": [f"e{n}"],
                    "user_ids": ["u"],
                    "distinct_users": 1,
                    "synthesizer": "offline",
                    "prompt_version": None,
                    "derived_by": "bench",
                    "trigger_id": None,
                    "trigger_reason": None,
                },
            }
        )
    return {
        "group": group,
        "version": 1,
        "parent": None,
        "reason": "bench",
        "created_ms": 0,
        "items": items,
    }


async def seed(bootstrap: str, topic: str, groups: list[str], n_items: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_request_size=16 * 1024 * 1024,
        enable_idempotence=False,
        max_batch_size=1024 * 1024,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, orjson.dumps(snapshot(g, n_items)), key=version_key(g, 1))
            for g in groups
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def load(url: str, groups: list[str], requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one_worker() -> None:
            for n in counter:
                user = groups[n % len(groups)].split(":", 1)[1]
                body = {"user_id": user, "query": f"how about {TOPICS[n % 10]}?", "max_tokens": 800}
                started = time.perf_counter()
                answer = await client.post("/v1/context", json=body)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text

        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    unique = uuid.uuid4().hex[:6]
    groups = [f"user:u{n}" for n in range(args.groups)]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(kafka_bootstrap=broker.bootstrap, app_id=f"bench-{unique}")
        asyncio.run(ensure_topics(broker.bootstrap, settings))
        started = time.perf_counter()
        asyncio.run(seed(broker.bootstrap, settings.topics.versions, groups, args.items))
        seeded = time.perf_counter() - started
        port = free_port()
        env = {
            **os.environ,
            "LEARNLOOP_KAFKA_BOOTSTRAP": broker.bootstrap,
            "LEARNLOOP_APP_ID": f"bench-{unique}",
            "LEARNLOOP_API_PORT": str(port),
            "LEARNLOOP_DATA_DIR": tmp,
            "LEARNLOOP_LOG_FORMAT": "json",
            "LEARNLOOP_LOG_LEVEL": "warning",
        }
        log = Path(tmp, "api.log").open("wb")  # noqa: SIM115 - closed after the process
        process = subprocess.Popen(
            [sys.executable, "-m", "learnloop", "api"], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            while True:
                try:
                    ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                    if (
                        ready
                        and httpx.get(f"{url}/v1/groups/{groups[-1]}/memory", timeout=5).status_code
                        == 200
                    ):
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - started > 600:
                    raise SystemExit("API did not index the memory in 600 s")
                time.sleep(0.5)
            indexed = time.perf_counter() - started
            asyncio.run(load(url, groups, 200, args.concurrency))  # warm-up
            started = time.perf_counter()
            latencies = asyncio.run(load(url, groups, args.requests, args.concurrency))
            wall = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(30)
            log.close()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    rows = {
        "groups": args.groups,
        "items_per_group": args.items,
        "points": args.groups * args.items,
        "seed_s": seeded,
        "api_read_and_index_s": indexed,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests_per_s": args.requests / wall,
    }
    print(f"/v1/context, 1 API process, embedded store, {args.groups} groups x {args.items} items")
    for key, value in rows.items():
        print(
            f"{key:<24} {value:>12,.2f}" if isinstance(value, float) else f"{key:<24} {value:>12,}"
        )
    if args.json:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
