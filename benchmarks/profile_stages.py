"""Where a worker's time goes: py-spy raw stacks grouped by stage, per event.

Run: python benchmarks/pipeline_throughput.py --events 20000 --profile prof.txt \
         --py-spy-args "--rate 250 --nonblocking"
     python benchmarks/profile_stages.py prof.txt --events 20000

A stack whose innermost frame is a selector's ``select`` is waiting; any other
stack goes to the first bucket (in the order below) one of whose markers
appears in any of its frames: a batch function of ours owns everything it calls
(its sends included), the consumer thread owns its fetches, and so on. Samples
are wall-clock stacks of a busy process, so on a shared machine they include
time spent waiting for a core: compare rows and runs, not absolute values.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

WAITING = "waiting in select (any thread's event loop)"
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up (imports, topic creation, recovery)", ("<frozen importlib",)),
    ("memory stage: synthesis, consolidation, versions", ("streams/memory_agent.py",)),
    ("join stage: decode, join, groups, bundles, slots out", ("streams/join_agent.py",)),
    ("aggregate stage: unbundle, fold, triggers, state out", ("streams/aggregate_agent.py",)),
    ("aiokafka consumer thread (fetch, record parsing)", ("mode/threads.py",)),
    ("aiokafka producer sender (requests, socket writes)", ("aiokafka/producer",)),
    ("metrics, web, lag", ("faust/web", "prometheus_client", "streams/web.py", "streams/lag.py")),
    (
        "Faust consume path (fetcher, conductor, take buffer, acks, commits)",
        ("faust/transport", "faust/streams.py", "faust/agents", "faust/channels.py"),
    ),
)
OTHER = "other"


def bucket_of(frames: list[str]) -> str:
    if "EpollSelector.select" in frames[-1]:
        return WAITING
    for name, markers in BUCKETS:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return OTHER


def summarise(path: Path) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        counts[bucket_of(stack.split(";"))] += int(n)
        total += int(n)
    return counts, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--events", type=int, required=True, help="events the run processed")
    parser.add_argument("--rate", type=float, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    counts, total = summarise(args.profile)
    per_sample_us = 1e6 / args.rate
    print(f"{total} samples at {args.rate:g}/s; µs of samples per event")
    print(f"{'where':<70} {'µs/event':>9} {'share':>7}")
    for name, _ in (*BUCKETS, (WAITING, ()), (OTHER, ())):
        n = counts.get(name, 0)
        print(f"{name:<70} {n * per_sample_us / args.events:>9.0f} {n / total:>7.1%}")
    print(f"{'total':<70} {total * per_sample_us / args.events:>9.0f} {1:>7.1%}")


if __name__ == "__main__":
    main()
