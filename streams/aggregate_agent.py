"""Agent: signals (keyed by group) -> per-group state -> synthesis triggers.

Per micro-batch: decode the signals (bundles of many from the join, or a lone
control signal from the memory stage), fold each group's
signals into its state with one processor call, deliver any triggers, then write
each touched group once, so changelog traffic grows with groups touched, not with
events. A signal's position is ``offset * POSITION_STRIDE + index`` in its
message, so replays of the signals topic are recognised per signal, not per
message.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from learnloop import metrics
from processors.aggregate import GroupState, apply_signals, copy_state
from processors.groups import scope_of
from processors.signals import Signal, signal_problem
from streams.dead_letters import rejected
from streams.isolation import ack_all, run_isolated
from streams.outputs import Outgoing, deliver, now_ms
from streams.signal_bundles import POSITION_STRIDE, unbundle

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
STAGE = "aggregate"


async def aggregate_batch(app: WorkerApp, events: list[Any]) -> None:
    started = time.perf_counter()
    by_group: dict[str, list[tuple[int, Signal]]] = defaultdict(list)
    partitions: dict[str, int] = {}
    out: list[Outgoing] = []
    types: Counter[str] = Counter()
    for event in events:
        message = event.message
        try:
            decoded = unbundle(message.value)
        except (orjson.JSONDecodeError, TypeError) as exc:
            out.append(_bad(app, message, type(exc).__name__, message.value))
            continue
        base = message.offset * POSITION_STRIDE
        for index, signal in enumerate(decoded):
            problem = signal_problem(signal)
            if problem is not None:
                out.append(_bad(app, message, problem, orjson.dumps(signal)))
                continue
            group = signal["group"]
            types[signal["type"]] += 1
            by_group[group].append((base + index, signal))
            partitions[group] = message.partition
    for kind, count in types.items():
        metrics.EVENTS_IN.labels(STAGE, kind).inc(count)
    now = now_ms()
    policy_of = app.settings.policy.for_scope
    states: dict[str, GroupState] = {}
    for group, signals in by_group.items():
        stored = app.group_state.data.get(group)
        # a private copy: the table changes only in write_batch, after delivery
        before = None if stored is None else copy_state(stored)
        earlier = before["tenant_conflicts"] if before else 0  # apply_signals changes before
        state, triggers = apply_signals(
            before, signals, now, policy_of(scope_of(group)), app.aggregate_limits
        )
        states[group] = state
        if state["tenant_conflicts"] > earlier:
            _tenant_conflict(group, state, earlier)
        for trigger in triggers:
            metrics.TRIGGERS.labels(trigger["scope"], trigger["reason"].split(":")[0]).inc()
            log.info(
                "trigger",
                group=group,
                reason=trigger["reason"],
                trigger_id=trigger["trigger_id"],
                evidence=len(trigger["evidence"]),
            )
            out.append(Outgoing(app.triggers_topic, group.encode(), orjson.dumps(trigger)))
    await deliver(STAGE, out, app.settings.external_timeout_s)
    await app.group_state.write_batch(
        STAGE,
        [(group, state, partitions[group]) for group, state in states.items()],
        app.settings.external_timeout_s,
    )
    metrics.GROUPS_OWNED.set(len(app.group_state.data))
    metrics.BATCH_SIZE.labels(STAGE).observe(len(events))
    metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def _tenant_conflict(group: str, state: GroupState, earlier: int) -> None:
    """Say loudly that another org's signals reached a group its first org owns.

    They are dropped (one tenant's feedback must never shape another's memory),
    which two orgs that reuse a team or user id would otherwise only see as
    feedback that never teaches anything. Logged at the first drop and then each
    time the group's count doubles, so a steady conflict does not flood the log.
    """
    total = state["tenant_conflicts"]
    metrics.TENANT_CONFLICTS.labels(state["scope"]).inc(total - earlier)
    if earlier and earlier.bit_length() == total.bit_length():
        return
    log.warning(
        "signals of another org dropped: the group belongs to its first org",
        group=group,
        owner_org=state["org"],
        dropped_so_far=total,
        stage=STAGE,
    )


def _bad(app: WorkerApp, message: Any, detail: str, value: bytes) -> Outgoing:
    """A dead letter for one undecodable message, or one bad signal inside a bundle."""
    return rejected(app, message, "bad_signal", detail, value=value)


def register(app: WorkerApp) -> None:
    settings = app.settings

    @app.agent(app.signals_topic, name="aggregate")  # type: ignore[misc]
    async def aggregate(stream: Any) -> None:
        # a message carries up to SIGNALS_PER_BUNDLE signals: take fewer messages
        size = max(8, settings.batch_max_events // 100)
        async for events in stream.noack_take(size, within=settings.batch_max_wait_s):
            async with app.in_flight:
                await run_isolated(app, STAGE, list(events), aggregate_batch)
                await ack_all(stream, events)
