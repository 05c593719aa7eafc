"""Agent: judge requests -> the LLM judge -> derived ratings back on the events topic.

Registered only when an LLM is configured and ``judge.sample_rate`` > 0. The join
stage asks for a judgement when a sampled interaction's feedback window closes
with no explicit feedback (``processors/join.py``). This agent never holds up the
others: it has its own topic and stream, every await has a deadline, the LLM
calls share the :class:`ChatClient`'s concurrency limit, and a request that cannot
be served now (endpoint down, breaker open, deadline passed) goes back on its
topic, due after a backoff, so it stays in the log until it is served. The
ratings have deterministic ids (``judge:<interaction id>``), so a repeat after a
crash is ignored by the join's dedupe.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from learnloop import metrics
from learnloop.synthesis.client import ChatClient
from learnloop.synthesis.errors import SynthesisUnavailable
from learnloop.synthesis.judge import JUDGE_LABEL, as_event, judge
from processors.judging import JudgeRequest, deferred
from schemas.validate import from_json_event
from streams.dead_letters import rejected
from streams.isolation import ack_all, run_isolated
from streams.outputs import Outgoing, deliver, now_ms

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
STAGE = "judge"
DEFERRED_PAUSE_S = 0.5
MAX_WAIT_S = 5.0  # longest pause before re-queuing requests that are not due yet
MAX_BATCH = 50


def judge_client(app: WorkerApp) -> ChatClient:
    """The LLM synthesizer's client when there is one (one breaker, one concurrency limit)."""
    shared = getattr(app.synthesizer, "client", None)
    if isinstance(shared, ChatClient):
        return shared
    llm = app.settings.llm
    assert llm is not None  # the agent is only registered with an LLM configured
    return ChatClient(
        llm.base_url,
        llm.model,
        llm.api_key,
        timeout_s=llm.timeout_s,
        max_retries=llm.max_retries,
        max_concurrency=llm.max_concurrency,
        breaker_threshold=llm.breaker_threshold,
        breaker_reset_s=llm.breaker_reset_s,
        price_per_1k_prompt=llm.price_per_1k_prompt,
        price_per_1k_completion=llm.price_per_1k_completion,
        max_total_s=min(llm.max_total_s, app.settings.judge.timeout_s),
        metric_label=JUDGE_LABEL,
    )


def _again(app: WorkerApp, request: JudgeRequest, partition: int) -> Outgoing:
    return Outgoing(
        app.judge_requests_topic,
        request["interaction_id"].encode(),
        orjson.dumps(request),
        partition=partition,
    )


async def _serve(
    app: WorkerApp, chunk: list[tuple[JudgeRequest, int]], now: int
) -> tuple[list[Outgoing], list[Outgoing]]:
    """Ratings for one LLM call's worth of requests, or the requests deferred."""
    settings = app.settings.judge
    llm = app.settings.llm
    try:
        async with asyncio.timeout(settings.timeout_s):
            ratings = await judge(
                [request for request, _ in chunk],
                client=app.judge_client,
                now_ms=now,
                sample_rate=1.0,  # the join already sampled them
                max_items=len(chunk),
                batch_size=len(chunk),
                min_confidence=settings.min_confidence,
                prompt_version=llm.prompt_version if llm else "v1",
                redact_patterns=app.settings.redact_patterns,
            )
    except (SynthesisUnavailable, TimeoutError) as exc:
        hint = getattr(exc, "retry_after_s", None)
        later = [
            _again(app, deferred(request, now, hint, settings.max_retry_delay_s), partition)
            for request, partition in chunk
        ]
        metrics.SYNTHESIS_REQUESTS.labels(JUDGE_LABEL, "deferred").inc()
        log.warning(
            "judge deferred",
            requests=len(chunk),
            attempt=chunk[0][0]["attempt"] + 1,
            error=type(exc).__name__,
        )
        return [], later
    out: list[Outgoing] = []
    for rating in ratings:
        record, errors = from_json_event(as_event(rating))
        if record is None:
            log.warning("judge rating invalid", fields=[field for field, _ in errors])
            continue
        out.append(
            Outgoing(app.events_topic, record["interaction_id"].encode(), app.codec.encode(record))
        )
    log.info("judged", requests=len(chunk), ratings=len(out))
    return out, []


async def judge_batch(app: WorkerApp, events: list[Any]) -> None:
    started = time.perf_counter()
    now = now_ms()
    out: list[Outgoing] = []
    later: list[Outgoing] = []
    ready: dict[str, tuple[JudgeRequest, int]] = {}
    earliest = now + int(MAX_WAIT_S * 1000)
    for event in events:
        message = event.message
        try:
            request: JudgeRequest = orjson.loads(message.value)
            request_id = request["request_id"]
            not_before = int(request["not_before_ms"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            out.append(rejected(app, message, "bad_judge_request", type(exc).__name__))
            continue
        if not_before > now:
            later.append(_again(app, request, message.partition))
            earliest = min(earliest, not_before)
        elif request_id in ready:
            metrics.DUPLICATES.labels(STAGE).inc()
        else:
            ready[request_id] = (request, message.partition)
    size = app.settings.judge.batch_size
    pending = list(ready.values())
    chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
    # concurrent chunks; the client's semaphore bounds requests in flight
    for served, deferred_out in await asyncio.gather(*(_serve(app, c, now) for c in chunks)):
        out += served
        later += deferred_out
    if later and not ready and not app.stopping:
        # only requests that are not due yet: wait (bounded) instead of re-sending in a loop
        await asyncio.sleep(max(DEFERRED_PAUSE_S, min(MAX_WAIT_S, (earliest - now) / 1000)))
    await deliver(STAGE, out + later, app.settings.external_timeout_s)
    metrics.EVENTS_OUT.labels(STAGE, "rating").inc(len(out))
    metrics.BATCH_SIZE.labels(STAGE).observe(len(events))
    metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def register(app: WorkerApp) -> None:
    settings = app.settings
    app.judge_client = judge_client(app)

    @app.agent(app.judge_requests_topic, name="judge")  # type: ignore[misc]
    async def judge_requests(stream: Any) -> None:
        async for events in stream.noack_take(MAX_BATCH, within=settings.batch_max_wait_s):
            async with app.in_flight:
                await run_isolated(app, STAGE, list(events), judge_batch)
                await ack_all(stream, events)
