"""Agent: events -> join with the interaction, dedupe, attribute groups -> signals.

Per micro-batch: decode each event (bad ones become dead letters), re-route
events whose Kafka key is not their interaction id, fold each into its
interaction's slot, deliver the signals (bundled per signals partition, see
``streams.signal_bundles``) and dead letters, then write each touched slot once.
A timer appends release markers for feedback that waited too long for its
interaction (released when the batch loop reads them, into the same bundles: see
:mod:`schemas.control`), asks the judge about sampled interactions nobody gave
feedback on (when the judge is on), and drops slots past their retention.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from learnloop import metrics
from processors.join import (
    JoinSlot,
    expire_judging,
    expired,
    judging_due,
    overdue,
    process_event,
    release,
)
from processors.judging import JudgeRequest
from processors.signals import DeadLetter, Signal
from schemas import DecodeError
from schemas.control import RELEASE, ReleaseMarker, control_kind, decode_release, encode_release
from streams.dead_letters import dead_letter, rejected
from streams.isolation import ack_all, run_isolated
from streams.outputs import Outgoing, deliver, now_ms
from streams.partitioning import default_partition, partition_count
from streams.signal_bundles import bundle_records

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
STAGE = "join"
SWEEP_EVERY = 60


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
        kind = control_kind(message.headers)
        if kind is not None:
            # its signals join the batch's bundles in log order: origins stay increasing
            released.extend(_control(app, message, kind, touched, out, now))
            continue
        try:
            record = app.codec.decode(message.value)
        except DecodeError as exc:
            out.append(rejected(app, message, exc.reason, exc.detail, exc.errors))
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


def _control(
    app: WorkerApp,
    message: Any,
    kind: bytes,
    touched: dict[str, tuple[int, JoinSlot]],
    out: list[Outgoing],
    now: int,
) -> list[Signal]:
    """A control record in the events topic (today only release markers): its signals.

    Dead letters go to ``out``; the signals go back to the caller, which bundles them
    with the batch's others in log order.
    """
    source = (message.topic, message.partition, message.offset)
    try:
        if kind != RELEASE:
            raise DecodeError("unknown_control", f"unknown control record {kind[:40]!r}")
        marker = decode_release(message.value)
    except DecodeError as exc:
        out.append(rejected(app, message, exc.reason, exc.detail, exc.errors))
        return []
    slot_key = marker["interaction_id"]
    current = touched.get(slot_key)
    slot = current[1] if current else _load(app.join_slots, slot_key)
    slot, signals, dead = release(
        slot, marker["event_ids"], (message.partition, message.offset), now, app.join_config
    )
    metrics.EVENTS_IN.labels(STAGE, "release").inc()
    if slot is None:
        return []
    touched[slot_key] = (message.partition, slot)
    out.extend(_dead_out(app, d, source) for d in dead)
    return signals


def _load(table: Any, key: str) -> JoinSlot | None:
    stored = table.snapshot(key)
    return None if stored is None else stored[1]  # type: ignore[no-any-return]


def _release_out(app: WorkerApp, key: str, event_ids: list[str], partition: int) -> Outgoing:
    marker: ReleaseMarker = {"interaction_id": key, "event_ids": event_ids}
    value, headers = encode_release(marker)
    return Outgoing(app.events_topic, key.encode(), value, headers, partition=partition)


async def expire_slots(app: WorkerApp, *, full_sweep: bool) -> None:
    """Ask for overdue feedback's release, ask the judge, drop expired slots.

    Every tick looks only at slots known to hold waiting feedback or a due judge
    candidate; a full sweep (every ``SWEEP_EVERY`` ticks, and after a restart)
    finds expired slots too. Overdue feedback is not released here but by a
    marker appended to the events topic (:mod:`schemas.control`), once per
    feedback event and worker (``app.release_asked``; a repeat is harmless).
    """
    now = now_ms()
    table = app.join_slots
    config = app.join_config
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
    asked = app.release_asked
    for key in keys:
        stored = table.data.get(key)
        if stored is None or stored[0] not in assigned:
            asked.pop(key, None)
            continue
        partition, slot = stored  # read only: a copy is taken below if it changes
        if slot["pending"]:
            app.pending_slots.add(key)  # until a marker has released it
            late = [e for e in overdue(slot, now, config) if e not in asked.get(key, ())]
            if late:
                asked.setdefault(key, set()).update(late)
                out.append(_release_out(app, key, late, partition))
        else:
            asked.pop(key, None)
        if judging_due(slot, now):
            slot = table.snapshot(key)[1]
            slot, requests = expire_judging(slot, now)
            out.extend(_judge_out(app, r, partition) for r in requests)
            writes.append((key, partition, slot))
        elif expired(slot, now, config):
            writes.append((key, partition, None))
        elif slot.get("judge") is not None and key not in app.judge_slots:
            app.judge_slots[key] = slot["judge"]["due_ms"]  # type: ignore[index]  # sweep after a restart
    if out:
        await deliver(STAGE, out, app.settings.external_timeout_s)
    if writes:
        await table.write_batch(
            STAGE,
            [
                (key, None if slot is None else [partition, slot], partition)
                for key, partition, slot in writes
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
