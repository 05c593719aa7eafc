"""learnloop's own work per event with no Kafka and no Faust: the processors alone.

Run by ``pipeline_throughput.py`` in the same run as the worker (or on its own:
``python benchmarks/processors_only.py --events 20000``). It feeds the benchmark's
Avro-encoded events through the calls the worker's agents make per micro-batch,
in one process and in memory: decode, join (the slot copied out of and written
back to the table as the agent does), bundle the signals, parse and check them,
fold each group's signals into a private copy of its state, and serialize the
states for the changelog. No broker, no event loop, no synthesis.

Its events/s is therefore a ceiling for one worker process on this code, however
the events are read: it says how much of the worker's time is learnloop's own
work and how much is Kafka and Faust, and each stage's µs per event says where
that work goes.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import defaultdict
from typing import Any

import orjson
from faust.utils import json as faust_json

from learnloop.producer import EventProducer
from learnloop.settings import load_settings
from processors.aggregate import AggregateLimits, GroupState, apply_signals, copy_state
from processors.groups import scope_of
from processors.join import JoinConfig, JoinSlot, process_event
from processors.signals import Signal, signal_problem
from schemas import EventCodec
from streams.run import tune_gc
from streams.signal_bundles import POSITION_STRIDE, bundle, unbundle

ROW = "processors alone, no Kafka or Faust (events/s)"
STAGES = ("decode", "join", "bundle", "unbundle", "fold", "state out")
NOW_MS = 1_795_600_000_000


def encode(events: list[dict[str, Any]]) -> list[bytes]:
    """The events as the producer writes them (validated, Avro); it is never connected."""
    producer = EventProducer("unused:9092")
    return [producer.prepare(event)[1] for event in events]


def measure(values: list[bytes], batch: int = 1000, partitions: int = 4) -> dict[str, float]:
    """µs of each stage per event, ``total`` and ``events_per_s``, for ``values`` in batches."""
    settings = load_settings()
    policy_of = settings.policy.for_scope
    codec = EventCodec()
    join_config = JoinConfig(max_text_bytes=settings.max_kept_text_bytes)
    limits = AggregateLimits(max_text_bytes=settings.max_kept_text_bytes)
    slots: dict[str, list[Any]] = {}
    states: dict[str, GroupState] = {}
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    threshold = gc.get_threshold()
    tune_gc()  # as the worker does at start-up
    offset = 0
    for start in range(0, len(values), batch):
        t0 = clock()
        records = [codec.decode(value) for value in values[start : start + batch]]
        t1 = clock()
        touched: dict[str, JoinSlot] = {}
        released: list[Signal] = []
        for index, record in enumerate(records):
            key = record["interaction_id"] or record["event_id"]
            slot = touched.get(key)
            if slot is None and key in slots:  # the agent's table.snapshot: a private copy
                slot = orjson.loads(orjson.dumps(slots[key]))[1]
            slot, signals, _ = process_event(slot, record, (0, start + index), NOW_MS, join_config)
            touched[key] = slot
            released.extend(signals)
        for key, slot in touched.items():
            faust_json.dumps(key), faust_json.dumps([0, slot])  # the slots' changelog records
            slots[key] = [0, slot]
        t2 = clock()
        messages = bundle(released, partitions)
        t3 = clock()
        by_group: dict[str, list[tuple[int, Signal]]] = defaultdict(list)
        for _, value in messages:
            base = offset * POSITION_STRIDE
            offset += 1
            for position, signal in enumerate(unbundle(value)):
                if signal_problem(signal) is None:
                    by_group[signal["group"]].append((base + position, signal))
        t4 = clock()
        folded: dict[str, GroupState] = {}
        for group, group_signals in by_group.items():
            stored = states.get(group)
            before = None if stored is None else copy_state(stored)
            folded[group], _ = apply_signals(
                before, group_signals, NOW_MS, policy_of(scope_of(group)), limits
            )
        t5 = clock()
        for group, state in folded.items():
            faust_json.dumps(group), faust_json.dumps(state)
        states.update(folded)
        t6 = clock()
        marks = (t0, t1, t2, t3, t4, t5, t6)
        for stage, begin, end in zip(STAGES, marks, marks[1:], strict=False):
            spent[stage] += end - begin
    gc.unfreeze()
    gc.set_threshold(*threshold)
    result = {stage: seconds * 1e6 / len(values) for stage, seconds in spent.items()}
    result["total"] = sum(spent.values()) * 1e6 / len(values)
    result["events_per_s"] = len(values) / sum(spent.values())
    result["groups"] = len(states)
    return result


def report(result: dict[str, float]) -> None:
    """Where the processors' time goes, µs per event by stage."""
    print(f"{'processors alone, µs per event:':<58}")
    for stage in (*STAGES, "total"):
        print(f"{'    ' + stage:<58} {result[stage]:>12.1f}")


def main() -> None:
    from pipeline_throughput import make_events  # a sibling script

    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    result = measure(encode(make_events(args.events)), args.batch)
    print(f"{args.events} events, {result['groups']:,.0f} groups, batches of {args.batch}")
    print(f"{ROW:<58} {result['events_per_s']:>12,.0f}")
    report(result)


if __name__ == "__main__":
    main()
