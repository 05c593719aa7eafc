"""Timer: ask the owner of each group for a decay pass when its items have faded.

Every ``decay_interval_s`` each worker looks at the groups whose partition of the
memory inputs it owns, and for those where a decay pass would change something
(``processors/decay.py``) sends a ``decay`` command, keyed by group, to the
memory-commands topic. The memory agent (the group's single writer) applies it
like any other command: a new version with reason ``decay``. The timer never
writes memory itself, so a group has one writer even during a rebalance; a
command sent twice has the same id and is applied once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import structlog

from processors.decay import plan_decay
from processors.memory import Snapshot
from streams.outputs import Outgoing, deliver, now_ms
from streams.partitioning import default_partition, partition_count
from streams.web import is_ready

if TYPE_CHECKING:
    from streams.app import WorkerApp

log = structlog.get_logger(__name__)
STAGE = "decay"


async def issue_decay(app: WorkerApp) -> int:
    """Send decay commands for this worker's groups that need one; returns how many."""
    settings = app.settings
    now = now_ms()
    owned = {
        tp.partition
        for tp in app.assignor.assigned_actives()
        if tp.topic == settings.topics.commands
    }
    partitions = partition_count(app, settings.topics.commands, settings.partitions)
    snapshots: list[Snapshot] = [
        state["snapshot"]
        for group, state in list(app.memory.data.items())
        if state and default_partition(group.encode(), partitions) in owned
    ]
    commands = plan_decay(
        snapshots, now, app.consolidation_config, int(settings.decay_interval_s * 1000)
    )
    out = [Outgoing(app.commands_topic, c["group"].encode(), orjson.dumps(c)) for c in commands]
    await deliver(STAGE, out, settings.external_timeout_s)
    if commands:
        log.info("decay requested", groups=len(commands), checked=len(snapshots))
    return len(commands)


def register(app: WorkerApp) -> None:
    @app.timer(app.settings.decay_interval_s)  # type: ignore[misc]
    async def decay_tick() -> None:
        if not is_ready(app)[0]:
            return  # tables still recovering: their snapshots may be old
        try:
            await issue_decay(app)
        except Exception:
            log.exception("decay pass failed", stage=STAGE)
