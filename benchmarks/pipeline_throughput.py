"""Sustained events/s through join, grouping and aggregation for one worker process,
next to the raw aiokafka consume rate measured in the same run on the same broker.

Run: python benchmarks/pipeline_throughput.py --events 50000 [--json out.json]

Steps: start an embedded broker; produce N events (interactions and their
ratings/explanations, Avro, keyed by interaction); consume them all with a plain
aiokafka consumer (count only, then with decode) for the baseline; run a bare
Faust agent with the worker's configuration that only decodes and acks them
(``faust_floor.py``: the framework's own cost per event); run the worker's
processors on the same events in this process with no Kafka at all
(``processors_only.py``: learnloop's own cost per event, by stage); start one
`learnloop worker` and time it from its first consumed event to the last signal
aggregated (read from its /metrics), sampling its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from learnloop.embedded.broker import EmbeddedBroker, free_port
from learnloop.producer import EventProducer
from learnloop.settings import load_settings
from learnloop.topics import ensure_topics
from processors.groups import resolve_groups
from schemas import EventCodec

# a sibling script: this one runs as a file, with benchmarks/ first on sys.path
from processors_only import encode as encode_events  # isort: skip
from processors_only import measure as measure_processors  # isort: skip
from processors_only import ROW as PROCESSORS_ROW  # isort: skip
from processors_only import report as report_processors  # isort: skip


def make_events(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    i = 0
    while len(events) < n:
        user = f"u{rng.randrange(2000)}"
        team, org = f"t{int(user[1:]) % 200}", f"o{int(user[1:]) % 20}"
        base = {"timestamp": "2026-11-25T08:00:00Z", "user_id": user, "team_id": team,
                "org_id": org, "interaction_id": f"i{i}"}
        events.append({**base, "event_id": f"i{i}", "type": "interaction",
                       "query": "how do I rotate the billing API key?",
                       "response": "Call rotate_key with the old key id.",
                       "tool_calls": [{"name": "search", "arguments": "{\"q\": \"rotate\"}",
                                       "status": rng.choice(["ok", "ok", "error"])}]})
        events.append({**base, "event_id": f"r{i}", "type": "rating",
                       "value": rng.choice([1, -1])})
        if rng.random() < 0.2:
            events.append({**base, "event_id": f"x{i}", "type": "explanation",
                           "text": "use the v2 endpoint, v1 is deprecated"})
        i += 1
    return events[:n]


async def produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    async with EventProducer(bootstrap, topic, linger_ms=20) as producer:
        for start in range(0, len(events), 5000):
            await producer.emit_many(events[start : start + 5000])
    return len(events) / (time.perf_counter() - started)


async def raw_consume(bootstrap: str, topic: str, n: int, decode: bool) -> float:
    codec = EventCodec()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"raw-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                max_poll_records=2000)
    await consumer.start()
    try:
        seen = 0
        started = None
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for records in batch.values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    if decode:
                        codec.decode(record.value)
                    seen += 1
        assert started is not None
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(process: subprocess.Popen[bytes], profiled: bool) -> int:
    """The worker's pid: py-spy's child when profiling (py-spy's own RSS is not the worker's)."""
    if not profiled:
        return process.pid
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    try:
        return int(children.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return process.pid


def stop(process: subprocess.Popen[bytes], log: Any) -> None:
    """SIGINT (a graceful stop; py-spy writes its profile on it), then kill after 30 s."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def run_worker(bootstrap: str, env_extra: dict[str, str], expected_signals: int,
               expected_events: int, workdir: Path, profile: Path | None = None,
               py_spy_args: str = "--rate 50") -> dict[str, float]:
    port = free_port()
    env = {**os.environ, **env_extra, "LEARNLOOP_KAFKA_BOOTSTRAP": bootstrap,
           "LEARNLOOP_WORKER_WEB_PORT": str(port), "LEARNLOOP_LOG_FORMAT": "json",
           "LEARNLOOP_LOG_LEVEL": "warning", "LEARNLOOP_DATA_DIR": str(workdir)}
    log = (workdir / "worker.log").open("wb")
    command = [sys.executable, "-m", "learnloop", "worker"]
    if profile is not None:  # sample the worker with py-spy (pip install py-spy)
        command = ["py-spy", "record", "--format", "raw", *py_spy_args.split(), "-o",
                   str(profile), "--", *command]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/metrics"
    first = last = None
    cpu_first = cpu_last = 0.0
    peak_rss = 0.0
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                text = httpx.get(url, timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            joined = metric(text, "learnloop_events_in_total", stage="join")
            aggregated = metric(text, "learnloop_events_in_total", stage="aggregate")
            peak_rss = max(peak_rss, rss_mb(worker_pid(process, profile is not None)))
            now = time.perf_counter()
            if joined > 0 and first is None:
                first = now
                cpu_first = cpu_seconds(worker_pid(process, profile is not None))
            if aggregated >= expected_signals and joined >= expected_events:
                last = now
                cpu_last = cpu_seconds(worker_pid(process, profile is not None))
                (workdir.parent / "worker-metrics.txt").write_text(text)
                break
            time.sleep(0.1)
    finally:
        stop(process, log)
    if first is None or last is None:
        raise SystemExit(f"worker did not finish; see {workdir / 'worker.log'}")
    elapsed = last - first
    return {"events_per_s": expected_events / elapsed, "signals_per_s": expected_signals / elapsed,
            "seconds": elapsed, "peak_rss_mb": peak_rss,
            "cpu_busy": (cpu_last - cpu_first) / elapsed,
            "cpu_us_per_event": (cpu_last - cpu_first) * 1e6 / expected_events}


def run_bare_faust(bootstrap: str, env_extra: dict[str, str], expected_events: int,
                   workdir: Path) -> dict[str, float]:
    """Time ``faust_floor.py``: a Faust agent on the events topic that only decodes and acks."""
    out = workdir / "bare-faust.json"
    env = {**os.environ, **env_extra, "LEARNLOOP_KAFKA_BOOTSTRAP": bootstrap,
           "LEARNLOOP_WORKER_WEB_PORT": str(free_port()), "LEARNLOOP_LOG_LEVEL": "warning",
           "LEARNLOOP_DATA_DIR": str(workdir / "bare")}
    log = (workdir / "bare-faust.log").open("wb")
    script = Path(__file__).with_name("faust_floor.py")
    process = subprocess.Popen([sys.executable, str(script), "--bootstrap", bootstrap,
                                "--events", str(expected_events), "--out", str(out)],
                               env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 600
        while not out.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
    finally:
        stop(process, log)
    if not out.exists():
        raise SystemExit(f"bare Faust agent did not finish; see {workdir / 'bare-faust.log'}")
    result = orjson.loads(out.read_bytes())
    return {"events_per_s": result["events"] / result["seconds"],
            "cpu_us_per_event": result["cpu_seconds"] * 1e6 / result["events"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="py-spy raw stacks of the worker here")
    parser.add_argument("--py-spy-args", default="--rate 50",
                        help="extra py-spy record options, e.g. '--rate 100 --idle --threads'")
    args = parser.parse_args()
    events = make_events(args.events)
    signals = sum(len(resolve_groups(e["user_id"], e["team_id"], e["org_id"], {}, ()))
                  for e in events)
    unique = uuid.uuid4().hex[:6]
    env_extra = {"LEARNLOOP_APP_ID": f"bench-{unique}",
                 "LEARNLOOP_TOPICS__EVENTS": f"events-{unique}",
                 "LEARNLOOP_TOPICS__SIGNALS": f"signals-{unique}",
                 "LEARNLOOP_BROKER_TRUE_END_OFFSETS": "true"}
    settings = load_settings(kafka_bootstrap="x:1", topics={"events": f"events-{unique}",
                                                            "signals": f"signals-{unique}"})
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(ensure_topics(broker.bootstrap, settings))
        produce_rate = asyncio.run(produce(broker.bootstrap, settings.topics.events, events))
        raw_count = asyncio.run(raw_consume(broker.bootstrap, settings.topics.events,
                                            len(events), decode=False))
        raw_decode = asyncio.run(raw_consume(broker.bootstrap, settings.topics.events,
                                             len(events), decode=True))
        processors = measure_processors(encode_events(events), settings.batch_max_events)
        bare = run_bare_faust(broker.bootstrap, env_extra, len(events), Path(tmp))
        worker = run_worker(broker.bootstrap, env_extra, signals, len(events), Path(tmp),
                            args.profile, args.py_spy_args)
    rows = [
        ("aiokafka produce (EventProducer, Avro, batched)", produce_rate),
        ("raw aiokafka consume, count only", raw_count),
        ("raw aiokafka consume + Avro decode/validate", raw_decode),
        ("bare Faust agent: take + Avro decode + ack (events/s)", bare["events_per_s"]),
        ("learnloop worker: join + groups + aggregate (events/s)", worker["events_per_s"]),
        ("learnloop worker: signals aggregated/s", worker["signals_per_s"]),
        (PROCESSORS_ROW, processors["events_per_s"]),
    ]
    print(f"{args.events} events, {signals} group signals, 1 worker process, 4 partitions")
    print(f"{'measure':<58} {'per second':>12}")
    for name, value in rows:
        print(f"{name:<58} {value:>12,.0f}")
    print(f"{'worker / raw consume+decode':<58} {worker['events_per_s'] / raw_decode:>12.2%}")
    share = worker["events_per_s"] / bare["events_per_s"]
    print(f"{'worker / bare Faust agent':<58} {share:>12.2%}")
    print(f"{'worker peak RSS (MB)':<58} {worker['peak_rss_mb']:>12.0f}")
    print(f"{'worker CPU while timed (1.00 = one core busy)':<58} {worker['cpu_busy']:>12.2f}")
    print(f"{'worker CPU per event (µs; less noisy than events/s)':<58} "
          f"{worker['cpu_us_per_event']:>12.0f}")
    print(f"{'bare Faust agent CPU per event (µs)':<58} {bare['cpu_us_per_event']:>12.0f}")
    report_processors(processors)
    if args.json:
        args.json.write_bytes(orjson.dumps({"events": args.events, "signals": signals,
                                            "rows": dict(rows), "worker": worker,
                                            "bare_faust": bare, "processors": processors},
                                           option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
