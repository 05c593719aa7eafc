"""Consumer lag per partition, for the worker's /metrics and the lag alerts.

Reads the high watermark the consumer already got in its last fetch response
(no extra broker request) and the last committed offset. On the embedded Tansu
broker the high watermark under-counts batched records, so lag reads low there;
against Apache Kafka it is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from learnloop import metrics

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)


def update_lag(app: WorkerApp) -> None:
    consumer = app.consumer
    inputs = {
        app.settings.topics.events,
        app.settings.topics.signals,
        app.settings.topics.triggers,
        app.settings.topics.commands,
    }
    metrics.CONSUMER_LAG.clear()  # partitions this worker lost must stop reporting
    for tp in app.assignor.assigned_actives():
        if tp.topic not in inputs:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - no fetch yet for this partition
            continue
        committed = consumer._committed_offset.get(tp)  # Faust keeps no public one
        if highwater is None:
            continue
        lag = max(0, int(highwater) - int(committed if committed is not None else 0))
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)


def register(app: WorkerApp) -> None:
    @app.timer(5.0)  # type: ignore[misc]
    async def lag_timer() -> None:
        try:
            update_lag(app)
        except Exception:
            log.exception("lag update failed")
