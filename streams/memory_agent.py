"""Agent: synthesis requests and memory commands -> new memory versions.

The single writer of each group's memory. Both input topics are keyed by group
(co-partitioned), so one worker owns a group's triggers and its commands. Per
micro-batch and group: skip inputs already applied (ids remembered in the
table), run the synthesizer and consolidation or apply the command, then
deliver the new snapshot to the versions topic (keyed ``group#version``, in the
group's partition), the outcome to the results topic and a control signal back
to aggregation; only then write the table.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from learnloop import metrics
from learnloop.embeddings import embed_off_loop
from learnloop.synthesis.errors import SynthesisUnavailable
from processors.aggregate import FORGET_USER, SYNTHESIS_DONE, Trigger
from processors.consolidate import live_choices
from processors.memory import MemoryCommand, Snapshot, version_key
from processors.memory_ops import apply_command, empty_snapshot, next_snapshot
from processors.signals import Signal
from streams.dead_letters import rejected
from streams.isolation import ack_all, run_isolated
from streams.outputs import Outgoing, deliver, now_ms

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
STAGE = "memory"
DEFERRED_PAUSE_S = 0.5
MAX_RETRY_DELAY_S = 300.0
MAX_REMEMBERED_INPUTS = 64
# evidence below the scope's policy stays in the group's state to meet later evidence
DEFERRABLE = frozenset(
    {
        "insufficient_support",
        "substitution_below_policy",
        "insertion_below_policy",
        "tool_failures_below_policy",
    }
)


def _control_signal(group: str, kind: str, key: str, payload: dict[str, Any], now: int) -> Signal:
    return {
        "signal_id": f"{kind}|{key}",
        "group": group,
        "origin": None,
        "event_id": key,
        "type": kind,
        "timestamp": now,
        "user_id": "",
        "org_id": None,
        "interaction_id": None,
        "joined": False,
        "query": None,
        "response": None,
        "payload": payload,
        "flags": [],
    }


async def _synthesize(
    app: WorkerApp, current: Snapshot, trigger: Trigger, now: int
) -> tuple[Snapshot, list[str]]:
    """Candidates from the synthesizer, consolidated into the next version, and the ids of
    evidence left for later (below the scope's policy now, it may meet support later).

    The LLM synthesizer is async and bounded by its own total time budget; the
    extra margin here makes sure no await in the agent loop is unbounded.
    """
    started = time.perf_counter()
    synthesizer = app.synthesizer
    budget_s = _embed_budget_s(app)
    if inspect.iscoroutinefunction(synthesizer.synthesize):
        llm = app.settings.llm
        result = await asyncio.wait_for(
            synthesizer.synthesize(trigger, current["items"], now),
            (llm.max_total_s if llm else 120.0) + 10,
        )
        items, changes = await embed_off_loop(
            app.embedder,
            lambda: app.consolidate(current["items"], result["items"], now, trigger),
            budget_s,
        )
    else:

        def work() -> tuple[Any, tuple[list[Any], list[Any]]]:
            found = synthesizer.synthesize(trigger, current["items"], now)
            return found, app.consolidate(current["items"], found["items"], now, trigger)

        # a dense or remote embedder runs in a thread with a deadline, never on the loop
        result, (items, changes) = await embed_off_loop(app.embedder, work, budget_s)
    if not getattr(synthesizer, "records_metrics", False):
        metrics.SYNTHESIS_REQUESTS.labels(synthesizer.name, "ok").inc()
        metrics.SYNTHESIS_SECONDS.labels(synthesizer.name).observe(time.perf_counter() - started)
    log.info(
        "synthesis",
        group=current["group"],
        trigger_id=trigger["trigger_id"],
        candidates=len(result["items"]),
        skipped=len(result["skipped"]),
        changes=len(changes),
    )
    deferred = sorted({s["event_id"] for s in result["skipped"] if s["reason"] in DEFERRABLE})
    return next_snapshot(current, items, f"synthesis:{trigger['reason']}", now), deferred


async def memory_batch(app: WorkerApp, events: list[Any]) -> None:
    started = time.perf_counter()
    names = app.settings.topics
    out: list[Outgoing] = []
    deferred: list[Outgoing] = []
    touched: dict[str, tuple[int, dict[str, Any]]] = {}
    for event in events:
        message = event.message
        now = now_ms()
        try:
            value = orjson.loads(message.value)
            group = value["group"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            out.append(rejected(app, message, "bad_memory_input", type(exc).__name__))
            continue
        stored = touched[group][1] if group in touched else app.memory.get(group)
        state: dict[str, Any] = stored or {"snapshot": empty_snapshot(group), "applied": []}
        input_id = value.get("trigger_id") or value.get("command_id") or ""
        if input_id in state["applied"]:
            metrics.DUPLICATES.labels(STAGE).inc()
            continue
        current: Snapshot = state["snapshot"]
        result: dict[str, Any]
        if message.topic == names.triggers:
            trigger: Trigger = value
            if value.get("not_before_ms", 0) > now:
                deferred.append(
                    Outgoing(
                        app.triggers_topic,
                        group.encode(),
                        message.value,
                        partition=message.partition,
                    )
                )
                continue
            try:
                snapshot, deferred_ids = await _synthesize(app, current, trigger, now)
            except (SynthesisUnavailable, TimeoutError) as exc:
                deferred.append(_retry_later(app, value, exc, now, message.partition))
                continue
            evidence_ids = [e["event_id"] for e in trigger["evidence"]]
            out.append(
                _signal_out(
                    app,
                    _control_signal(
                        group,
                        SYNTHESIS_DONE,
                        trigger["trigger_id"],
                        {
                            "trigger_id": trigger["trigger_id"],
                            "version": snapshot["version"],
                            "evidence_ids": evidence_ids,
                            "deferred_ids": deferred_ids,
                            "live_choices": live_choices(snapshot["items"]),
                        },
                        now,
                    ),
                )
            )
            result = {
                "trigger_id": input_id,
                "group": group,
                "outcome": "applied",
                "version": snapshot["version"],
            }
        else:
            command: MemoryCommand = value
            new, rejection = apply_command(
                current,
                command,
                now,
                value.get("rollback_items"),
                decay_config=app.consolidation_config,
            )
            if rejection is not None:
                snapshot = current
                result = {
                    "command_id": input_id,
                    "group": group,
                    "outcome": "rejected",
                    "reason": rejection["reason"],
                }
                log.info(
                    "command rejected", group=group, command_id=input_id, reason=rejection["reason"]
                )
            else:
                snapshot = new
                result = {
                    "command_id": input_id,
                    "group": group,
                    "outcome": "applied",
                    "version": snapshot["version"],
                }
                if command["type"] == "forget_user":
                    out.append(
                        _signal_out(
                            app,
                            _control_signal(
                                group,
                                FORGET_USER,
                                input_id,
                                {"user_id": command.get("user_id")},
                                now,
                            ),
                        )
                    )
        if snapshot is not current:
            out.append(
                Outgoing(
                    app.versions_topic,
                    version_key(group, snapshot["version"]),
                    orjson.dumps(snapshot),
                    partition=message.partition,
                )
            )
            metrics.MEMORY_VERSIONS.labels(_scope(group), snapshot["reason"].split(":")[0]).inc()
        out.append(Outgoing(app.results_topic, input_id.encode(), orjson.dumps(result)))
        applied = [*state["applied"], input_id][-MAX_REMEMBERED_INPUTS:]
        touched[group] = (message.partition, {"snapshot": snapshot, "applied": applied})
    if deferred and len(deferred) == len(events):
        await asyncio.sleep(DEFERRED_PAUSE_S)  # only deferred triggers: do not spin
    await deliver(STAGE, out + deferred, app.settings.external_timeout_s)
    await app.memory.write_batch(
        STAGE,
        [(group, state, partition) for group, (partition, state) in touched.items()],
        app.settings.external_timeout_s,
    )
    metrics.BATCH_SIZE.labels(STAGE).observe(len(events))
    metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def _embed_budget_s(app: WorkerApp) -> float:
    """Deadline for synthesis work that embeds: every retry of the embedder, plus compute."""
    embedder = app.settings.embedder
    return embedder.timeout_s * (embedder.max_retries + 1) + 30.0


def _retry_later(
    app: WorkerApp, trigger: dict[str, Any], exc: BaseException, now: int, partition: int
) -> Outgoing:
    """Put a trigger that cannot be served now back on its topic, due after a backoff.

    The trigger stays in the log the whole time, so a crash cannot lose it.
    """
    attempt = int(trigger.get("attempt", 0)) + 1
    hint = getattr(exc, "retry_after_s", None)
    delay_s = hint if hint else min(MAX_RETRY_DELAY_S, 2.0**attempt)
    metrics.SYNTHESIS_REQUESTS.labels(app.synthesizer.name, "deferred").inc()
    log.warning(
        "synthesis deferred",
        group=trigger.get("group"),
        trigger_id=trigger.get("trigger_id"),
        attempt=attempt,
        retry_in_s=delay_s,
        error=type(exc).__name__,
    )
    retry = {**trigger, "attempt": attempt, "not_before_ms": now + int(delay_s * 1000)}
    return Outgoing(
        app.triggers_topic,
        str(trigger.get("group", "")).encode(),
        orjson.dumps(retry),
        partition=partition,
    )


def _scope(group: str) -> str:
    from processors.groups import scope_of

    return scope_of(group)


def _signal_out(app: WorkerApp, signal: Signal) -> Outgoing:
    return Outgoing(app.signals_topic, signal["group"].encode(), orjson.dumps(signal))


def register(app: WorkerApp) -> None:
    settings = app.settings

    @app.agent(app.memory_inputs, name="memory")  # type: ignore[misc]
    async def memory(stream: Any) -> None:
        async for events in stream.noack_take(100, within=settings.batch_max_wait_s):
            async with app.in_flight:
                await run_isolated(app, STAGE, list(events), memory_batch)
                await ack_all(stream, events)
