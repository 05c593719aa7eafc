"""Collector pauses are recorded, once per collection however often timing is switched on."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from learnloop import metrics


def full_collections() -> float:
    return REGISTRY.get_sample_value("learnloop_gc_pause_seconds_count", {"generation": "2"}) or 0


def test_every_full_collection_is_timed_once() -> None:
    metrics.time_gc_pauses()
    metrics.time_gc_pauses()
    before = full_collections()
    gc.collect()
    assert full_collections() == before + 1
