"""A batch folds into a private copy of a table value, never into the stored one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from learnloop.settings import load_settings
from streams.app import WorkerApp, create_app


@pytest.fixture
def app() -> Iterator[WorkerApp]:
    app = create_app(load_settings(kafka_bootstrap="127.0.0.1:1"))
    yield app
    # an app that never started still owns event loops: its own and its consumer thread's
    app.consumer._thread.thread_loop.close()
    app.loop.close()


def test_changing_a_snapshot_leaves_the_table_as_it_was(app: WorkerApp) -> None:
    table = app.join_slots
    table.data["i-1"] = [2, {"seen": ["e-1"], "pending": [], "interaction": None}]
    partition, slot = table.snapshot("i-1")
    slot["seen"].append("e-2")  # what a batch does before it delivers its signals
    slot["interaction"] = {"query": "q"}
    assert partition == 2
    assert table.data["i-1"] == [2, {"seen": ["e-1"], "pending": [], "interaction": None}]


def test_the_snapshot_of_an_absent_key_is_none(app: WorkerApp) -> None:
    assert app.group_state.snapshot("team:nobody") is None
