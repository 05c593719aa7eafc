"""Prometheus metrics of every learnloop process.

Label values are bounded sets only: event types, stages, reasons, scopes
(``user``, ``team``, ``org``, ``global`` or a derived kind from the settings),
routes as templates and status codes. Raw user or group ids never become label
values; per-group numbers are served by ``/v1/groups/{group}/stats`` instead.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter(
    "learnloop_events_in_total", "Events consumed, by stage and event type", ["stage", "type"]
)


def events_in_by_stage() -> dict[str, int]:
    """Events this process consumed so far, per stage (for its shutdown log line)."""
    totals: dict[str, int] = {}
    for metric in EVENTS_IN.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                stage = sample.labels["stage"]
                totals[stage] = totals.get(stage, 0) + int(sample.value)
    return totals


EVENTS_OUT = Counter(
    "learnloop_events_out_total", "Records produced, by stage and kind", ["stage", "kind"]
)
DUPLICATES = Counter(
    "learnloop_duplicates_total", "Inputs dropped as already seen, by stage", ["stage"]
)
DEAD_LETTERS = Counter(
    "learnloop_dead_letters_total", "Records sent to the dead-letter topic, by reason", ["reason"]
)
BATCH_SECONDS = Histogram(
    "learnloop_batch_seconds",
    "Time to process one micro-batch, by stage",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "learnloop_batch_events",
    "Events in one micro-batch, by stage",
    ["stage"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000),
)
TRIGGERS = Counter(
    "learnloop_triggers_total",
    "Synthesis requests emitted, by scope and reason",
    ["scope", "reason"],
)
TENANT_CONFLICTS = Counter(
    "learnloop_tenant_conflicts_total",
    "Signals dropped because their org is not the org that owns the group, by scope "
    "(team or user ids reused across orgs: make them unique, e.g. prefix the org)",
    ["scope"],
)
CONSUMER_LAG = Gauge(
    "learnloop_consumer_lag", "Records behind the end of a partition", ["topic", "partition"]
)
GROUPS_OWNED = Gauge("learnloop_groups_owned", "Groups whose state this worker holds")
SEND_RETRIES = Counter(
    "learnloop_send_retries_total", "Output batches re-sent after a timeout, by stage", ["stage"]
)
API_REQUESTS = Counter(
    "learnloop_api_requests_total",
    "HTTP requests by route template and status",
    ["route", "status"],
)
API_LATENCY = Histogram(
    "learnloop_api_request_seconds",
    "HTTP request latency by route template",
    ["route"],
    # from 0.25 ms: a cached /v1/context request takes ~0.4 ms in the app
    buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
INGEST_REJECTED = Counter(
    "learnloop_ingest_rejected_total", "Events rejected at the HTTP API, by reason", ["reason"]
)
SYNTHESIS_REQUESTS = Counter(
    "learnloop_synthesis_requests_total",
    "Synthesis requests handled, by synthesizer and outcome",
    ["synthesizer", "outcome"],
)
SYNTHESIS_SECONDS = Histogram(
    "learnloop_synthesis_seconds",
    "Time to synthesise and consolidate one trigger, by synthesizer",
    ["synthesizer"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60),
)
SYNTHESIS_TOKENS = Counter(
    "learnloop_synthesis_tokens_total",
    "LLM tokens used, by synthesizer and direction",
    ["synthesizer", "direction"],
)
SYNTHESIS_COST = Counter(
    "learnloop_synthesis_cost_usd_total",
    "Estimated LLM cost in USD, by synthesizer",
    ["synthesizer"],
)
MEMORY_VERSIONS = Counter(
    "learnloop_memory_versions_total",
    "Memory versions published, by scope and reason",
    ["scope", "reason"],
)
MEMORY_ITEMS = Gauge(
    "learnloop_memory_items",
    "Items in the current memory of served groups, by scope and status",
    ["scope", "status"],
)
MEMORY_INDEX_BEHIND = Gauge(
    "learnloop_memory_index_behind_groups",
    "Groups whose current memory version is not in the vector index yet: indexing failed "
    "and is retried with backoff (their new examples are missing from context answers)",
)
API_HISTORY_BYTES = Gauge(
    "learnloop_api_history_bytes",
    "Compressed memory versions this API replica holds for the history endpoints, by where "
    "(disk: its history file; memory: kept in the heap when no file can be written)",
    ["where"],
)
CONTEXT_ITEMS = Histogram(
    "learnloop_context_items",
    "Items returned per context request",
    buckets=(0, 1, 2, 5, 10, 20, 50),
)
CONTEXT_PREFIX_CACHE = Counter(
    "learnloop_context_prefix_cache_total",
    "Context requests whose prefix came from the cache (hit) or was assembled (miss)",
    ["result"],
)
CONTEXT_FAST_PATH = Counter(
    "learnloop_context_fast_path_total",
    "POST /v1/context requests answered by the fast path (served) or handed to the route "
    "(handed_on: another content type, a body that does not parse or validate, a problem)",
    ["result"],
)
CONTEXT_SEARCH_SECONDS = Histogram(
    "learnloop_context_search_seconds",
    "Time of the vector-store search for a context request's examples",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
CONTEXT_TOKENS = Histogram(
    "learnloop_context_tokens",
    "Estimated tokens per context returned",
    buckets=(0, 50, 100, 200, 400, 800, 1600, 3200),
)
GC_PAUSE_SECONDS = Histogram(
    "learnloop_gc_pause_seconds",
    "Pauses of CPython's cyclic garbage collector, by generation (the process stops meanwhile)",
    ["generation"],
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
_gc_started: list[float] = []


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(
            time.perf_counter() - _gc_started.pop()
        )


def time_gc_pauses() -> None:
    """Record every collector pause in ``learnloop_gc_pause_seconds`` (idempotent).

    A full collection walks every tracked object: in the API that is every memory
    snapshot read, so its pauses land directly in request latency.
    """
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)
