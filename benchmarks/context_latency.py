"""`/v1/context` latency (p50/p99) and requests/s for one API process.

Memory is written straight to the versions topic (the source of truth the API
reads), one snapshot per group with N items (rules and examples); then one
`learnloop api` process reads it, indexes it into the embedded store (or a Qdrant
server with --qdrant-url), and is loaded on loopback at a fixed concurrency by
clients in their own processes: wrk (C, if installed: `apt-get install wrk`) for a
fixed time, and an httpx client for a fixed number of requests. Latency is measured
by the clients, so it includes HTTP. Each caller is sent once first (the cold pass,
reported apart), so the timed runs measure the steady state. Printed besides: CPU
per request of the API and of the client (they share the machine's cores), the
API's own time in the app and in the store search, prefix-cache hits, full garbage
collections, the load average, and the floor (`GET /healthz`). --profile writes
py-spy stacks of the API during the first timed run.

Run: python benchmarks/context_latency.py --groups 1000 --items 200 --requests 3000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.settings import load_settings
from learnloop.topics import ensure_topics
from processors.memory import estimate_tokens, item_id, version_key

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


class Layout(NamedTuple):
    """How the groups split into scopes; user ``u<k>`` is in team ``t<k % teams>`` and org
    ``o<k % orgs>``, so each caller's context merges up to three groups."""

    users: int
    teams: int = 0
    orgs: int = 0
    max_tokens: int = 800

    def groups(self) -> list[str]:
        return (
            [f"user:u{n}" for n in range(self.users)]
            + [f"team:t{n}" for n in range(self.teams)]
            + [f"org:o{n}" for n in range(self.orgs)]
        )


def request_body(layout: Layout, n: int) -> dict[str, Any]:
    """Request ``n``: round-robin over the users, and a query no earlier request asked."""
    k = n % layout.users
    body: dict[str, Any] = {
        "user_id": f"u{k}",
        "query": f"how about {TOPICS[n % 10]}, case {n}?",
        "max_tokens": layout.max_tokens,
    }
    if layout.teams:
        body["team_id"] = f"t{k % layout.teams}"
    if layout.orgs:
        body["org_id"] = f"o{k % layout.orgs}"
    return body


WRK_SCRIPT = """
local n = 0
local topics = {%(topics)s}
request = function()
  n = n + 1
  local k = n %% %(users)d
  local scopes = ""
  if %(teams)d > 0 then scopes = scopes .. string.format(',"team_id":"t%%d"', k %% %(teams)d) end
  if %(orgs)d > 0 then scopes = scopes .. string.format(',"org_id":"o%%d"', k %% %(orgs)d) end
  local body = string.format(
    '{"user_id":"u%%d"%%s,"query":"how about %%s, case %%d?","max_tokens":%(max_tokens)d}',
    k, scopes, topics[n %% 10 + 1], n)
  return wrk.format("POST", "/v1/context", {["content-type"] = "application/json"}, body)
end
"""

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %d %d %d %d %d %d %d %f %f %f\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


async def load_httpx(url: str, layout: Layout, requests: int, concurrency: int) -> list[float]:
    """A Python client in this process (not the API's): ``concurrency`` keep-alive loops."""
    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one_worker() -> None:
            for n in counter:
                started = time.perf_counter()
                answer = await client.post("/v1/context", json=request_body(layout, n))
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise SystemExit(f"request {n} answered {answer.status_code}: {answer.text}")

        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return latencies


def run_httpx(url: str, layout: Layout, requests: int, concurrency: int) -> dict[str, float]:
    cpu = time.process_time()
    started = time.perf_counter()
    latencies = sorted(asyncio.run(load_httpx(url, layout, requests, concurrency)))
    wall = time.perf_counter() - started
    return {
        "requests": float(len(latencies)),
        "wall_s": wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "p999_ms": latencies[int(len(latencies) * 0.999) - 1] * 1000,
        "client_cpu_s": time.process_time() - cpu,
    }


def run_wrk(
    url: str, layout: Layout, seconds: int, concurrency: int, tmp: str, path: str = "/v1/context"
) -> dict[str, float]:
    """wrk (C, one thread, keep-alive) in its own process; every answer must be 2xx.

    ``path`` other than ``/v1/context`` is fetched with a plain GET (the floor).
    """
    script = Path(tmp, "context.lua")
    request = WRK_SCRIPT % {"topics": ", ".join(f'"{t}"' for t in TOPICS), **layout._asdict()}
    script.write_text((request if path == "/v1/context" else "") + WRK_DONE)
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"{url}{path}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    line = next((x for x in output.splitlines() if x.startswith("RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({process.returncode}):\n{output}")
    fields = line.split()[1:]
    count, duration_us, *errors = (int(x) for x in fields[:7])
    if any(errors):
        raise SystemExit(f"wrk saw errors (connect read write status timeout): {errors}\n{output}")
    p50, p99, p999 = (float(x) / 1000 for x in fields[7:])
    return {
        "requests": float(count),
        "wall_s": duration_us / 1e6,
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


HIT = 'learnloop_context_prefix_cache_total{result="hit"}'
MISS = 'learnloop_context_prefix_cache_total{result="miss"}'
SEARCH_SUM = "learnloop_context_search_seconds_sum"
SEARCH_COUNT = "learnloop_context_search_seconds_count"
APP_SUM = 'learnloop_api_request_seconds_sum{route="/v1/context"}'
APP_COUNT = 'learnloop_api_request_seconds_count{route="/v1/context"}'
GC_FULL = 'python_gc_collections_total{generation="2"}'
GC_FULL_SUM = 'learnloop_gc_pause_seconds_sum{generation="2"}'
GC_SUMS = tuple(f'learnloop_gc_pause_seconds_sum{{generation="{g}"}}' for g in "012")
APP_BUCKET = "learnloop_api_request_seconds_bucket{"


def api_metrics(url: str) -> dict[str, float]:
    """The API's own counters that explain its latency."""
    names = (HIT, MISS, SEARCH_SUM, SEARCH_COUNT, APP_SUM, APP_COUNT, GC_FULL, GC_FULL_SUM)
    out = dict.fromkeys(names + GC_SUMS, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in out:
            out[name] += float(value)
        elif name.startswith(APP_BUCKET) and 'route="/v1/context"' in name:
            out["le=" + name.split('le="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Like Prometheus' ``histogram_quantile``: linear within the bucket it falls in."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (buckets[bound] - below)
        lower, below = bound, buckets[bound]
    return lower


def explain(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Prefix-cache hit rate and server-side ms per request: in the app, in the store."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    nan = float("nan")
    buckets = {float(k[3:]): v for k, v in d.items() if k.startswith("le=")}
    return {
        "prefix_cache_hit_rate": d[HIT] / (d[HIT] + d[MISS]) if d[HIT] + d[MISS] else nan,
        "in_app_ms": d[APP_SUM] / d[APP_COUNT] * 1000 if d[APP_COUNT] else nan,
        "in_app_p50_ms": histogram_quantile(0.5, buckets) * 1000 if buckets else nan,
        "in_app_p99_ms": histogram_quantile(0.99, buckets) * 1000 if buckets else nan,
        "store_search_ms": d[SEARCH_SUM] / d[SEARCH_COUNT] * 1000 if d[SEARCH_COUNT] else nan,
        "full_gc_collections": d[GC_FULL],
        "full_gc_seconds": d[GC_FULL_SUM],
        "gc_seconds": sum(d[k] for k in GC_SUMS),
    }


def wait_indexed(url: str, last_group: str, timeout_s: float) -> float:
    started = time.perf_counter()
    while True:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            memory = httpx.get(f"{url}/v1/groups/{last_group}/memory", timeout=5)
            if ready and memory.status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if time.perf_counter() - started > timeout_s:
            raise SystemExit(f"API did not index the memory in {timeout_s:.0f} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument(
        "--client",
        choices=["wrk", "httpx", "both"],
        default="both" if shutil.which("wrk") else "httpx",
        help="load generator (wrk: apt-get install wrk)",
    )
    parser.add_argument("--requests", type=int, default=5000, help="httpx client: requests")
    parser.add_argument("--seconds", type=int, default=10, help="wrk: duration")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--teams", type=int, default=0, help="of the groups, team groups (callers are in one)"
    )
    parser.add_argument("--max-tokens", type=int, default=800, help="budget of each request")
    parser.add_argument(
        "--orgs", type=int, default=0, help="of the groups, org groups (callers are in one)"
    )
    parser.add_argument(
        "--cache-entries",
        type=int,
        default=None,
        help="LEARNLOOP_CONTEXT_CACHE_ENTRIES for the API (0 turns caches off)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy raw stacks of the API during the (first) measured load"
    )
    parser.add_argument(
        "--qdrant-url",
        help="run the API on this Qdrant server (LEARNLOOP_QDRANT_URL) instead of the embedded "
        "store; its 'memory' collection must be empty or disposable",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    unique = uuid.uuid4().hex[:6]
    layout = Layout(args.groups - args.teams - args.orgs, args.teams, args.orgs, args.max_tokens)
    if layout.users < 1:
        parser.error("--groups must exceed --teams + --orgs")
    groups = layout.groups()
    rows: dict[str, Any] = {
        "groups": args.groups,
        "layout": layout._asdict(),
        "items_per_group": args.items,
        "points": args.groups * args.items,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "store": f"Qdrant server {args.qdrant_url}"
        if args.qdrant_url
        else "embedded store (qdrant-edge)",
    }
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(kafka_bootstrap=broker.bootstrap, app_id=f"bench-{unique}")
        asyncio.run(ensure_topics(broker.bootstrap, settings))
        started = time.perf_counter()
        asyncio.run(seed(broker.bootstrap, settings.topics.versions, groups, args.items))
        rows["seed_s"] = time.perf_counter() - started
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
        if args.qdrant_url:
            env["LEARNLOOP_QDRANT_URL"] = args.qdrant_url
        if args.cache_entries is not None:
            env["LEARNLOOP_CONTEXT_CACHE_ENTRIES"] = str(args.cache_entries)
        log = Path(tmp, "api.log").open("wb")  # noqa: SIM115 - closed after the process
        process = subprocess.Popen(
            [sys.executable, "-m", "learnloop", "api"], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        clients = ["wrk", "httpx"] if args.client == "both" else [args.client]
        try:
            rows["api_read_and_index_s"] = wait_indexed(url, groups[-1], 900)
            # Warm-up: every caller once, so the runs below measure the steady state (each
            # caller's prefix cached). This pass is reported apart: it is what callers see
            # right after a start or a memory change (prefix assembled, precedence checked).
            api_cpu, counters = cpu_seconds(process.pid), api_metrics(url)
            cold = run_httpx(url, layout, max(layout.users, 500), args.concurrency)
            cold["api_cpu_s"] = cpu_seconds(process.pid) - api_cpu
            cold.update(explain(counters, api_metrics(url)))
            cold["load_average_1m"] = os.getloadavg()[0]
            rows["cold"] = cold
            sample = httpx.post(f"{url}/v1/context", json=request_body(layout, 1), timeout=5).json()
            rows["groups_per_answer"] = len(sample["versions"])
            rows["examples_per_answer"] = len(sample["examples"])
            idle = cpu_seconds(process.pid)
            time.sleep(3.0)  # what the API burns with no requests (following the logs)
            rows["api_idle_cpu"] = (cpu_seconds(process.pid) - idle) / 3.0
            for name in clients:
                spy = None
                if args.profile is not None and name == clients[0]:
                    spy = subprocess.Popen(
                        [
                            shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "--format",
                            "raw",
                            "--rate",
                            "200",
                            "--nonblocking",
                            "--pid",
                            str(process.pid),
                            "-o",
                            str(args.profile),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)
                api_cpu, counters = cpu_seconds(process.pid), api_metrics(url)
                if name == "wrk":
                    result = run_wrk(url, layout, args.seconds, args.concurrency, tmp)
                else:
                    result = run_httpx(url, layout, args.requests, args.concurrency)
                result["api_cpu_s"] = cpu_seconds(process.pid) - api_cpu
                result.update(explain(counters, api_metrics(url)))
                result["load_average_1m"] = os.getloadavg()[0]
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
                rows[name] = result
            first = rows[clients[0]]  # the flat keys `learnloop bench context` reads
            rows.update(
                client=clients[0],
                requests=int(first["requests"]),
                p50_ms=first["p50_ms"],
                p99_ms=first["p99_ms"],
                requests_per_s=first["requests"] / first["wall_s"],
            )
            if "wrk" in clients:  # what the framework costs with no work in the handler
                api_cpu = cpu_seconds(process.pid)
                floor = run_wrk(url, layout, 5, args.concurrency, tmp, path="/healthz")
                floor["api_cpu_s"] = cpu_seconds(process.pid) - api_cpu
                rows["floor"] = floor
        finally:
            process.terminate()
            process.wait(30)
            log.close()
    report(rows)
    report_floor(rows)
    if args.json:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


def report_floor(rows: dict[str, Any]) -> None:
    if "floor" in rows:
        r = rows["floor"]
        print(
            f"floor: GET /healthz with wrk, same process and settings: "
            f"{r['requests'] / r['wall_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
            f"API CPU {r['api_cpu_s'] / r['requests'] * 1000:.2f} ms/req"
        )


def report(rows: dict[str, Any]) -> None:
    print(
        f"/v1/context, 1 API process, {rows['store']}, "
        f"{rows['groups']:,} groups x {rows['items_per_group']} items "
        f"({rows['layout']['users']:,} user, {rows['layout']['teams']:,} team, "
        f"{rows['layout']['orgs']:,} org), budget {rows['max_tokens']} tokens, "
        f"concurrency {rows['concurrency']}"
    )
    if rows["store"].startswith("embedded"):
        print(
            "(Qdrant server adapter: not measured in this run; pass --qdrant-url where a "
            "server is reachable: none can be installed on the development machines)"
        )
    print(f"machine: {os.cpu_count()} cores, shared: the API, the client and anything else")
    for key in (
        "points",
        "seed_s",
        "api_read_and_index_s",
        "api_idle_cpu",
        "groups_per_answer",
        "examples_per_answer",
    ):
        value = rows[key]
        print(
            f"{key:<24} {value:>14,.2f}" if isinstance(value, float) else f"{key:<24} {value:>14}"
        )
    for name in ("cold", "wrk", "httpx"):
        if name not in rows:
            continue
        r = rows[name]
        if name == "cold":
            print("first request of every caller (httpx client, prefix cache cold):")
        print(
            f"client {'httpx' if name == 'cold' else name:<6} "
            f"requests {r['requests']:>8,.0f}  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  p99.9 {r['p999_ms']:6.2f} ms  "
            f"{r['requests'] / r['wall_s']:8,.0f} req/s  "
            f"API CPU {r['api_cpu_s'] / r['requests'] * 1000:.2f} ms/req  "
            f"client CPU {r['client_cpu_s'] / r['requests'] * 1000:.2f} ms/req "
            f"({r['client_cpu_s'] / r['wall_s']:.0%} of a core)"
        )
        print(
            f"  in the API: {r['in_app_ms']:.2f} ms/req in the app (after HTTP parsing; "
            f"p50 ~{r['in_app_p50_ms']:.2f} ms, p99 ~{r['in_app_p99_ms']:.2f} ms from its "
            f"histogram), of which {r['store_search_ms']:.2f} ms in the store search; "
            f"prefix cache hits {r['prefix_cache_hit_rate']:.1%}; "
            f"GC pauses {r['gc_seconds'] * 1000:.0f} ms in all, full GCs "
            f"{r['full_gc_collections']:.0f} ({r['full_gc_seconds'] * 1000:.0f} ms); "
            f"load average after the run {r['load_average_1m']:.2f}"
        )


if __name__ == "__main__":
    main()
