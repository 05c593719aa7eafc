"""Benchmark decode + validate throughput of the event codec, per encoding and event type.

Why: the join agent decodes and validates every event it consumes on one core,
so the codec's speed bounds a worker's throughput. The goal is at least 100,000
Avro events/s on one core.

    python benchmarks/codec_bench.py [--events 2000] [--rounds 15] [--json out.json]

Measures ``EventCodec.decode`` (detect the encoding, decode, validate: exactly
what a worker runs per message) over a list of distinct, realistic events of
one type and one encoding, in a single thread pinned to one CPU. Each cell is
the best of ``--rounds`` passes over the list (the least disturbed run), in
events per second; ``bytes`` is the mean encoded size. Every decoded event is
checked against the original once, outside the timed loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import orjson

from schemas import EventCodec, WireFormat, from_json_event, to_json_event
from schemas.events import EVENT_TYPES, EventRecord

GOAL_AVRO_PER_S = 100_000
MIXED = "mixed (all types interleaved)"
WORDS = (
    *("the", "billing", "api", "v2", "client", "returns", "invalid", "token", "please"),
    *("use", "retry", "with", "backoff", "search", "index", "results", "were", "stale"),
    *("prefer", "the", "newer", "endpoint", "and", "cite", "the", "source"),
)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _envelope(rng: random.Random, n: int, kind: str) -> dict[str, Any]:
    user = f"user-{rng.randrange(500)}"
    event: dict[str, Any] = {
        "event_id": f"{kind[:2]}-{n:08d}-{rng.getrandbits(32):08x}",
        "type": kind,
        "timestamp": f"2026-11-25T08:{n % 60:02d}:{rng.randrange(60):02d}.{n % 1000:03d}Z",
        "user_id": user,
        "team_id": f"team-{rng.randrange(20)}",
        "org_id": "acme",
        "metadata": {"persona": rng.choice(["analyst", "developer"]), "region": "eu"},
    }
    if kind != "interaction":
        event["interaction_id"] = f"i-{rng.randrange(100_000):06d}"
    return event


def make_event(kind: str, n: int, rng: random.Random) -> dict[str, Any]:
    """One realistic event of ``kind`` in the brief's JSON form."""
    event = _envelope(rng, n, kind)
    statuses = ("ok", "ok", "ok", "error", "timeout")
    if kind == "interaction":
        event["query"] = _text(rng, 12)
        event["response"] = _text(rng, 40)
        event["model"] = "gpt-x"
        event["tool_calls"] = [
            {
                "name": rng.choice(["search", "billing.lookup", "fetch"]),
                "arguments": json.dumps({"q": _text(rng, 3)}),
                "status": (status := rng.choice(statuses)),
                "error": "HTTP 500" if status == "error" else None,
                "latency_ms": round(rng.uniform(1, 900), 1),
            }
            for _ in range(2)
        ]
    elif kind == "rating":
        if rng.random() < 0.7:
            event["value"] = rng.choice([1, -1])
        else:
            event["score"] = rng.randrange(1, 6)
            event["scale"] = 5
    elif kind == "explanation":
        event["text"] = _text(rng, 25)
    elif kind == "edit":
        event["original"] = _text(rng, 30)
        event["edited"] = _text(rng, 32)
    elif kind == "engagement":
        event["kind"] = rng.choice(["dwell_ms", "return_visit", "conversion", "copy", "abandon"])
        event["value"] = float(rng.randrange(1, 60_000))
    elif kind == "tool_call":
        event["name"] = "billing.lookup"
        event["arguments"] = json.dumps({"account": rng.randrange(10**6)})
        event["status"] = rng.choice(statuses)
        event["latency_ms"] = round(rng.uniform(1, 900), 1)
    return {k: v for k, v in event.items() if v is not None}


def records(kind: str, count: int, seed: int) -> list[EventRecord]:
    rng = random.Random(f"{seed}-{kind}")
    out: list[EventRecord] = []
    for n in range(count):
        record, errors = from_json_event(make_event(kind, n, rng))
        if record is None:
            raise SystemExit(f"benchmark event of type {kind} is invalid: {errors}")
        out.append(record)
    return out


def best_rate(decode: Callable[[bytes], Any], payloads: list[bytes], rounds: int) -> float:
    """Events per second of the fastest of ``rounds`` passes over ``payloads``."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        for data in payloads:
            decode(data)
        best = min(best, time.perf_counter() - started)
    return len(payloads) / best


def pin_to_one_cpu() -> str:
    """Run on one CPU so the numbers are per core; returns which one, for the report."""
    if not hasattr(os, "sched_setaffinity"):
        return "unpinned"
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"cpu {cpu}"


def _row(wire: WireFormat, kind: str, rate: float, payloads: list[bytes]) -> dict[str, Any]:
    return {
        "encoding": wire.value,
        "type": kind,
        "events_per_s": round(rate),
        "bytes": round(sum(map(len, payloads)) / len(payloads)),
    }


def run(events: int, rounds: int, seed: int) -> list[dict[str, Any]]:
    """One row per (type, encoding), then per encoding a row for all types interleaved."""
    codec = EventCodec()
    rows: list[dict[str, Any]] = []
    mixed: dict[WireFormat, list[list[bytes]]] = {wire: [] for wire in WireFormat}
    for kind in EVENT_TYPES:
        originals = records(kind, events, seed)
        for wire in WireFormat:
            payloads = [codec.encode(record, wire) for record in originals]
            for record, data in zip(originals, payloads, strict=True):  # correct, not just fast
                if to_json_event(codec.decode(data)) != to_json_event(record):
                    raise SystemExit(f"{wire} round trip of {record['event_id']} differs")
            rows.append(_row(wire, kind, best_rate(codec.decode, payloads, rounds), payloads))
            mixed[wire].append(payloads)
    for wire, per_type in mixed.items():
        # equal parts of every type, interleaved, as a worker would see a mixed stream
        payloads = [data for group in zip(*per_type, strict=True) for data in group]
        rows.append(_row(wire, MIXED, best_rate(codec.decode, payloads, rounds), payloads))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    kinds = list(dict.fromkeys(row["type"] for row in rows))
    wires = list(dict.fromkeys(row["encoding"] for row in rows))
    cell = {(row["type"], row["encoding"]): row for row in rows}
    header = "| type | " + " | ".join(f"{w} events/s | {w} bytes" for w in wires) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(wires))]
    for kind in kinds:
        values = []
        for wire in wires:
            values += [f"{cell[(kind, wire)]['events_per_s']:,}", str(cell[(kind, wire)]["bytes"])]
        lines.append(f"| {kind} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="distinct events per cell")
    parser.add_argument("--rounds", type=int, default=15, help="passes per cell; best counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    where = pin_to_one_cpu()
    rows = run(args.events, args.rounds, args.seed)
    avro = [r for r in rows if r["encoding"] == WireFormat.AVRO.value]
    slowest = min(avro, key=lambda r: r["events_per_s"])
    mixed = next(r for r in avro if r["type"] == MIXED)
    print(
        f"decode + validate, one thread on {where}; python {platform.python_version()}, "
        f"fastavro {fastavro.__version__}, orjson {orjson.__version__}; "
        f"{args.events} events per cell, best of {args.rounds}\n"
    )
    print(table(rows))
    print(f"\ngoal: {GOAL_AVRO_PER_S:,} Avro events/s on one core")
    for label, row in (("mixed stream", mixed), (f"slowest type ({slowest['type']})", slowest)):
        verdict = "meets" if row["events_per_s"] >= GOAL_AVRO_PER_S else "MISSES"
        print(f"  {label}: {row['events_per_s']:,} events/s, {verdict} it")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": where,
                    "python": platform.python_version(),
                    "fastavro": fastavro.__version__,
                    "events_per_cell": args.events,
                    "rounds": args.rounds,
                    "goal_avro_events_per_s": GOAL_AVRO_PER_S,
                    "results": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
