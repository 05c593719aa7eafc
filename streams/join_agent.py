"""Agent: events -> join with the interaction, dedupe, attribute groups -> signals.

Per micro-batch: decode each event (bad ones become dead letters), re-route
events whose Kafka key is not their interaction id, fold each into its
interaction's slot, deliver the signals (bundled per signals partition, see
``streams.signal_bundles``) and dead letters, then write each touched slot once.
A timer releases feedback that waited too long for its interaction (one message
per signal: few, and it keeps that path as it was), asks the judge about sampled
interactions nobody gave feedback on (when the judge is on), and drops slots past
their retention.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from learnloop import metrics
from processors.join import JoinSlot, expire, expire_judging, judging_due, process_event
from processors.judging import JudgeRequest
from processors.signals import DeadLetter, Signal
from schemas import DecodeError
from streams.dead_letters import dead_letter
from streams.isolation import ack_all, run_isolated
from streams.outputs import Outgoing, deliver, now_ms
from streams.partitioning import default_partition, partition_count
from streams.signal_bundles import bundle_records

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
STAGE = "join"
SWEEP_EVERY = 60


def _signal_out(app: WorkerApp, signal: Signal) -> Outgoing:
    return Outgoing(
        topic=app.signals_topic, key=signal["group"].encode(), value=orjson.dumps(signal)
    )


def _judge_out(app: WorkerApp, request: JudgeRequest, partition: int) -> Outgoing:
    # same key and partition count as the events topic: the request stays with its slot
    return Outgoing(
        topic=app.judge_requests_topic,
        key=request["interaction_id"].encode(),
        value=orjson.dumps(request),
        partition=partition,
    )


def _dead_out(app: WorkerApp, dead: DeadLetter, source: tuple[str, int, int]) -> Outgoing:
    log.warning("dead letter", event_id=dead["event_id"], reason=dead["reason"], stage=STAGE)
    return dead_letter(
        app,
        dead["reason"],
        dead["detail"],
        value=orjson.dumps(dead),
        key=(dead["event_id"] or "").encode(),
        topic=source[0],
        partition=source[1],
        offset=source[2],
    )


async def join_batch(app: WorkerApp, events: list[Any]) -> None:
    """Process one micro-batch of Faust events from the events topic."""
    async with app.join_lock:  # the expiry timer changes slots too: one at a time
        await _join_batch(app, events)


async def _join_batch(app: WorkerApp, events: list[Any]) -> None:
    started = time.perf_counter()
    now = now_ms()
    table = app.join_slots
    touched: dict[str, tuple[int, JoinSlot]] = {}
    out: list[Outgoing] = []
    released: list[Signal] = []
    types: Counter[str] = Counter()
    duplicates = 0
    partitions = partition_count(app, app.settings.topics.events, app.settings.partitions)
    for event in events:
        message = event.message
        source = (message.topic, message.partition, message.offset)
        try:
            record = app.codec.decode(message.value)
        except DecodeError as exc:
            out.append(
                dead_letter(
                    app,
                    exc.reason,
                    exc.detail,
                    value=message.value,
                    key=message.key,
                    topic=source[0],
                    partition=source[1],
                    offset=source[2],
                    errors=exc.errors,
                )
            )
            continue
        types[record["type"]] += 1
        slot_key = record["interaction_id"] or record["event_id"]
        key = slot_key.encode()
        home = default_partition(key, partitions)
        if message.key != key or message.partition != home:
            # not co-partitioned with its interaction (wrong key, or a producer that
            # chose the partition itself): forward it; the slot dedupes a re-forward
            out.append(Outgoing(app.events_topic, key, message.value, partition=home))
            metrics.EVENTS_OUT.labels(STAGE, "forwarded").inc()
            continue
        current = touched.get(slot_key)
        slot = current[1] if current else _load(table, slot_key)
        seen_before = slot is not None and record["event_id"] in slot["seen"]
        slot, signals, dead = process_event(
            slot, record, (message.partition, message.offset), now, app.join_config
        )
        duplicates += seen_before
        touched[slot_key] = (message.partition, slot)
        if slot["pending"]:
            app.pending_slots.add(slot_key)
        candidate = slot.get("judge")
        if candidate is not None:
            app.judge_slots[slot_key] = candidate["due_ms"]
        else:
            app.judge_slots.pop(slot_key, None)
        released.extend(signals)
        out.extend(_dead_out(app, d, source) for d in dead)
    out.extend(bundle_records(app, released))
    await deliver(STAGE, out, app.settings.external_timeout_s)
    # metrics once per batch and label: a labels() lookup per event cost ~3% of the worker
    for kind, count in types.items():
        metrics.EVENTS_IN.labels(STAGE, kind).inc(count)
    if duplicates:
        metrics.DUPLICATES.labels(STAGE).inc(duplicates)
    metrics.EVENTS_OUT.labels(STAGE, "signal").inc(len(released))
    await table.write_batch(
        STAGE,
        [(key, [partition, slot], partition) for key, (partition, slot) in touched.items()],
        app.settings.external_timeout_s,
    )
    metrics.BATCH_SIZE.labels(STAGE).observe(len(events))
    metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def _load(table: Any, key: str) -> JoinSlot | None:
    stored = table.snapshot(key)
    return None if stored is None else stored[1]  # type: ignore[no-any-return]


async def expire_slots(app: WorkerApp, *, full_sweep: bool) -> None:
    """Release overdue feedback and drop expired slots on this worker's partitions.

    Every tick looks only at slots known to hold waiting feedback; a full sweep
    (every ``SWEEP_EVERY`` ticks, and after a restart) finds expired slots too.
    """
    now = now_ms()
    table = app.join_slots
    assigned = {
        tp.partition
        for tp in app.assignor.assigned_actives()
        if tp.topic == app.settings.topics.events
    }
    out: list[Outgoing] = []
    writes: list[tuple[str, int, JoinSlot | None]] = []
    due = [key for key, due_ms in app.judge_slots.items() if due_ms <= now]
    if full_sweep:
        keys = list(table.data.keys())
    else:
        keys = list(dict.fromkeys([*app.pending_slots, *due]))
    app.pending_slots.clear()
    for key in due:
        del app.judge_slots[key]
    for key in keys:
        stored = table.data.get(key)
        if stored is None:
            continue
        partition, slot = stored  # read only: a copy is taken below if it changes
        if partition not in assigned:
            continue
        judge_now = judging_due(slot, now)
        if (
            not slot["pending"]
            and not judge_now
            and now - slot["touched_ms"] < app.join_config.retention_ms
        ):
            if slot.get("judge") is not None:  # found by a sweep after a restart
                app.judge_slots[key] = slot["judge"]["due_ms"]  # type: ignore[index]
            continue
        slot = table.snapshot(key)[1]
        slot, requests = expire_judging(slot, now)
        out.extend(_judge_out(app, r, partition) for r in requests)
        new_slot, signals, dead = expire(slot, now, app.join_config)
        out.extend(_signal_out(app, s) for s in signals)
        out.extend(_dead_out(app, d, (app.settings.topics.events, partition, -1)) for d in dead)
        writes.append((key, partition, new_slot))
        if new_slot is not None and new_slot["pending"]:
            app.pending_slots.add(key)
    if not writes:
        return
    await deliver(STAGE, out, app.settings.external_timeout_s)
    await table.write_batch(
        STAGE,
        [
            (key, None if new_slot is None else [partition, new_slot], partition)
            for key, partition, new_slot in writes
        ],
        app.settings.external_timeout_s,
    )


def register(app: WorkerApp) -> None:
    settings = app.settings

    @app.agent(app.events_topic, name="join")  # type: ignore[misc]
    async def join(stream: Any) -> None:
        async for events in stream.noack_take(
            settings.batch_max_events, within=settings.batch_max_wait_s
        ):
            async with app.in_flight:
                await run_isolated(app, STAGE, list(events), join_batch)
                await ack_all(stream, events)

    ticks = 0

    @app.timer(settings.tick_interval_s)  # type: ignore[misc]
    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        try:
            async with app.join_lock:  # it changes slots too: not during a batch
                await expire_slots(app, full_sweep=ticks % SWEEP_EVERY == 1)
        except Exception:
            log.exception("expiry sweep failed", stage=STAGE)
