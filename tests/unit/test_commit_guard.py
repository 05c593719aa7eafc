"""The worker's consumer never commits past an offset that no agent has processed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from learnloop.settings import load_settings
from streams.app import create_app
from streams.transport import ContiguousCommitConsumer

TP0, TP1 = TP("events", 0), TP("events", 1)
_apps: list[object] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    """An app (never started) still owns event loops, its own and its consumer thread's."""
    yield
    while _apps:
        app = _apps.pop()
        app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]
        app.loop.close()  # type: ignore[attr-defined]


def _consumer(**settings: object) -> ContiguousCommitConsumer:
    app = create_app(load_settings(kafka_bootstrap="127.0.0.1:1", **settings))
    _apps.append(app)
    consumer = app.consumer
    assert isinstance(consumer, ContiguousCommitConsumer)
    return consumer


def test_a_hole_at_the_committed_position_holds_the_commit() -> None:
    for consumer in (_consumer(), _consumer(broker_true_end_offsets=True)):
        consumer._committed_offset[TP0] = 5
        consumer._acked[TP0] = [6, 7, 8]  # 5 was fetched but skipped, not processed
        assert consumer._new_offset(TP0) is None
        consumer._acked[TP0].insert(0, 5)  # processed after all
        assert consumer._new_offset(TP0) == 9


def test_before_any_commit_the_first_offset_read_is_the_floor() -> None:
    consumer = _consumer()
    consumer._read_offset[TP1] = 0
    consumer._read_offset[TP1] = 1
    consumer._acked[TP1] = [1, 2]
    assert consumer._new_offset(TP1) is None
    consumer._acked[TP1].insert(0, 0)
    assert consumer._new_offset(TP1) == 3


def test_faust_alone_commits_over_the_hole() -> None:
    """Why the guard exists; if this starts failing, Faust has fixed it upstream."""
    consumer = _consumer()
    consumer._committed_offset[TP0] = 5
    consumer._acked[TP0] = [6, 7, 8]
    assert faust_aiokafka.Consumer._new_offset(consumer, TP0) == 9
