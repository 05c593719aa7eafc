"""``create_app(settings)``: the Faust app with its topics, tables and agents.

Data flow (topic -> agent -> topic)::

    events (key: interaction id) --join--> signals (key: group) --aggregate--> triggers
    triggers + memory-commands (key: group) --memory--> memory-versions, memory-results
    memory --(synthesis done, forget user)--> signals
    join --(sampled interaction nobody rated)--> judge-requests --judge--> events
    anything undecodable or failing --> dead letters

The agents are thin: decode, call a processor, send outputs, write the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import faust
import structlog
from mode.utils.times import Seconds

from learnloop import metrics
from learnloop.codec import make_codec
from learnloop.embeddings import make_embedder
from learnloop.settings import Settings
from processors.aggregate import AggregateLimits, Trigger
from processors.consolidate import (
    Change,
    ConsolidationConfig,
    consolidate,
    recovered_tools,
    statements_of,
)
from processors.embedding import Embedder
from processors.join import JoinConfig
from processors.judging import JudgeConfig
from processors.memory import MemoryItem
from processors.synthesis import Synthesizer
from processors.synthesis.offline import OfflineSynthesizer
from schemas import EventCodec
from streams.draining import InFlight
from streams.tables import ExplicitPartitionTable

log = structlog.get_logger(__name__)


class WorkerApp(faust.App):  # type: ignore[misc]
    """The learnloop Faust app; holds its settings, topics and tables as attributes."""

    settings: Settings
    codec: EventCodec
    join_config: JoinConfig
    aggregate_limits: AggregateLimits
    events_topic: faust.TopicT
    signals_topic: faust.TopicT
    triggers_topic: faust.TopicT
    dead_letter_topic: faust.TopicT
    commands_topic: faust.TopicT
    versions_topic: faust.TopicT
    results_topic: faust.TopicT
    memory_inputs: faust.TopicT
    judge_requests_topic: faust.TopicT
    judge_client: Any
    join_slots: ExplicitPartitionTable
    group_state: ExplicitPartitionTable
    memory: ExplicitPartitionTable
    synthesizer: Synthesizer
    consolidation_config: ConsolidationConfig
    embedder: Embedder
    #: (current, candidates, now, trigger or None) -> the next items and what changed
    consolidate: Callable[..., tuple[list[MemoryItem], list[Change]]]
    #: set once partitions are assigned and table recovery has finished
    ready: asyncio.Event
    #: join-slot keys known to hold feedback waiting for its interaction
    pending_slots: set[str]
    #: join-slot key -> pending feedback this worker already asked a release marker for
    release_asked: dict[str, set[str]]
    #: join-slot key -> when its interaction is due for the judge (if nobody rates it)
    judge_slots: dict[str, int]
    #: micro-batches taken and not yet acked (see streams/draining.py)
    in_flight: InFlight
    #: held by a join batch or the expiry timer while it changes join slots
    join_lock: asyncio.Lock
    stopping: bool = False

    async def on_stop(self) -> None:
        self.stopping = True
        await super().on_stop()
        await self._close_clients()

    async def _close_clients(self) -> None:
        """Close the HTTP clients of the LLM and a remote embedder (pooled connections)."""
        closers: list[Any] = []
        for holder in (getattr(self, "synthesizer", None), getattr(self, "judge_client", None)):
            if hasattr(holder, "aclose"):
                closers.append(holder.aclose())
        embedder = getattr(self, "embedder", None)
        if hasattr(embedder, "close"):
            closers.append(asyncio.to_thread(embedder.close))
        for closing in closers:
            try:
                await asyncio.wait_for(closing, timeout=5.0)
            except Exception:  # a failed close must not block the exit
                log.warning("could not close a client at shutdown", exc_info=True)

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        """Faust's hook after the partitions are paused: at shutdown, drain and commit.

        Faust calls it on a rebalance too, where we do nothing: its own
        ``wait_empty`` is off (``stream_wait_empty=False``) because it can wait
        forever on messages cleared from the agents' buffers (Faust #402).
        """
        if not self.stopping:
            return
        timeout_s = self.settings.shutdown_drain_s
        self.in_flight.close()  # first, so no batch starts while we wait and commit
        drained = await self.in_flight.wait_idle(timeout_s)
        try:
            committed = bool(await asyncio.wait_for(consumer.commit(), timeout_s))
        except TimeoutError:
            committed = None  # unknown: the periodic commit may still have made it
        log.info(
            "worker drained",
            drained=drained,
            batches_cut=self.in_flight.count,
            new_offsets_committed=committed,
            processed=metrics.events_in_by_stage(),
        )


def _table(app: WorkerApp, name: str, partitions: int) -> ExplicitPartitionTable:
    table = ExplicitPartitionTable(
        app,
        name=name,
        default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partitions=partitions,
        help=f"learnloop {name}",
    )
    return app.tables.add(table)  # type: ignore[no-any-return]


def _synthesizer(settings: Settings, embedder: Embedder) -> Any:
    """The offline synthesizer by default; the LLM one when configured."""
    if settings.synthesizer == "llm" and settings.llm is not None:
        from learnloop.synthesis.llm import LLMSynthesizer

        llm = settings.llm
        return LLMSynthesizer(
            llm.base_url,
            llm.model,
            llm.api_key,
            timeout_s=llm.timeout_s,
            max_retries=llm.max_retries,
            max_concurrency=llm.max_concurrency,
            breaker_threshold=llm.breaker_threshold,
            breaker_reset_s=llm.breaker_reset_s,
            max_total_s=llm.max_total_s,
            price_per_1k_prompt=llm.price_per_1k_prompt,
            price_per_1k_completion=llm.price_per_1k_completion,
            prompt_version=llm.prompt_version,
            redact_patterns=settings.redact_patterns,
            policy_for_scope=settings.policy.for_scope,
        )
    return OfflineSynthesizer(
        embedder,
        settings.policy.for_scope,
        cluster_threshold=settings.cluster_threshold,
        redact_patterns=settings.redact_patterns,
    )


def faust_options(settings: Settings, servers: str) -> dict[str, Any]:
    """The Faust app's configuration for ``settings`` and bootstrap ``servers``.

    Shared with ``benchmarks/pipeline_throughput.py``, whose bare Faust agent
    measures the framework's own cost per event with exactly the worker's
    consumer, transport and buffers.
    """
    scheme = "tansu" if settings.true_end_offsets else "kafka"
    commit: Seconds = settings.commit_interval_s
    return {
        "broker": ";".join(f"{scheme}://{server}" for server in servers.split(",")),
        "store": "memory://",
        "autodiscover": False,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "broker_commit_interval": commit,
        "broker_max_poll_records": settings.batch_max_events,
        "stream_buffer_maxsize": max(4096, 2 * settings.batch_max_events),
        "stream_wait_empty": False,
        "table_standby_replicas": 0,
        "web_enabled": True,
        "web_port": settings.worker_web_port,
        "web_bind": "0.0.0.0" if settings.api_host == "0.0.0.0" else "127.0.0.1",
        "web_in_thread": False,
        "producer_linger_ms": 2,
        "consumer_auto_offset_reset": "earliest",
        "datadir": str(settings.data_dir / "worker"),
        # Faust's 60 s defaults make a join wait up to a minute for members that left
        # (measured: see README, "Start-up time"); short ones make start and fail-over fast.
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout_s / 5),
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
    }


def use_transport(app: faust.App, settings: Settings) -> None:
    """Plain ``kafka://`` gets our transport too (``tansu://`` has it by entry point)."""
    if not settings.true_end_offsets:
        from streams.transport import KafkaTransport

        app.transport = KafkaTransport(app.conf.broker_consumer, app)


def create_app(settings: Settings, *, bootstrap: str | None = None) -> WorkerApp:
    """Build the worker app. ``bootstrap`` overrides the settings (embedded broker port)."""
    servers = bootstrap or settings.kafka_bootstrap
    if servers is None:
        raise ValueError("create_app needs a bootstrap server (start the embedded broker first)")
    app = WorkerApp(settings.app_id, **faust_options(settings, servers))
    use_transport(app, settings)
    app.settings = settings
    app.codec = make_codec(settings)
    app.join_config = JoinConfig(
        rules=settings.derived_groups,
        wait_ms=int(settings.join_wait_s * 1000),
        retention_ms=int(settings.interaction_retention_s * 1000),
        orphan_feedback=settings.orphan_feedback,
        max_seen=settings.max_seen_ids_per_interaction,
        max_pending=settings.max_pending_per_interaction,
        judge=JudgeConfig(
            sample_rate=settings.judge.sample_rate if settings.judge_enabled else 0.0,
            after_ms=int(settings.judge.after_s * 1000),
            seed=settings.judge.seed,
        ),
        max_text_bytes=settings.max_kept_text_bytes,
    )
    app.aggregate_limits = AggregateLimits(max_text_bytes=settings.max_kept_text_bytes)
    names = settings.topics
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    app.events_topic = app.topic(names.events, partitions=settings.partitions, **raw)
    app.signals_topic = app.topic(names.signals, partitions=settings.partitions, **raw)
    app.triggers_topic = app.topic(names.triggers, partitions=settings.partitions, **raw)
    app.dead_letter_topic = app.topic(names.dead_letters, partitions=1, **raw)
    app.commands_topic = app.topic(names.commands, partitions=settings.partitions, **raw)
    app.versions_topic = app.topic(
        names.versions, partitions=settings.partitions, compacting=True, **raw
    )
    app.results_topic = app.topic(names.results, partitions=1, **raw)
    app.memory_inputs = app.topic(names.triggers, names.commands, **raw)
    app.judge_requests_topic = app.topic(
        names.judge_requests, partitions=settings.partitions, **raw
    )
    app.join_slots = _table(app, "join-slots", settings.partitions)
    app.group_state = _table(app, "group-state", settings.partitions)
    app.memory = _table(app, "memory", settings.partitions)
    embedder = make_embedder(settings.embedder)
    app.embedder = embedder
    app.synthesizer = _synthesizer(settings, embedder)
    config = ConsolidationConfig(
        max_items=settings.max_items_per_group,
        token_budget=settings.token_budget_per_group,
        merge_threshold=settings.merge_threshold,
        decay_half_life_ms=int(settings.decay_half_life_s * 1000),
    )

    def consolidate_items(
        current: list[MemoryItem],
        candidates: list[MemoryItem],
        now: int,
        trigger: Trigger | None = None,
    ) -> tuple[list[MemoryItem], list[Change]]:
        if trigger is None:
            return consolidate(current, candidates, now, config, embedder)
        policy = settings.policy.for_scope(trigger["scope"])
        return consolidate(
            current,
            candidates,
            now,
            config,
            embedder,
            statements=statements_of(trigger["evidence"]),
            min_users=policy.min_users,
            recovered=recovered_tools(
                trigger["stats"], policy.min_tool_calls, policy.tool_failure_rate
            ),
        )

    app.consolidate = consolidate_items
    app.consolidation_config = config
    app.ready = asyncio.Event()
    app.pending_slots = set()
    app.release_asked = {}
    app.judge_slots = {}
    app.in_flight = InFlight()
    app.join_lock = asyncio.Lock()

    from streams import aggregate_agent, decay_timer, join_agent, lag, memory_agent, web

    lag.register(app)
    join_agent.register(app)
    aggregate_agent.register(app)
    memory_agent.register(app)
    decay_timer.register(app)
    if settings.judge_enabled:
        from streams import judge_agent

        judge_agent.register(app)
    web.register(app)
    return app
