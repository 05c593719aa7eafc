"""The worker's consumer stops the fetch loop's flow before it seeks to committed offsets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from learnloop.settings import load_settings
from streams.app import WorkerApp, create_app
from streams.consumer import WorkerConsumer

_apps: list[WorkerApp] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    """An app (never started) still owns event loops, its own and its consumer thread's."""
    yield
    while _apps:
        app = _apps.pop()
        app.consumer._thread.thread_loop.close()
        app.loop.close()


def _consumer(**settings: object) -> WorkerConsumer:
    app = create_app(load_settings(kafka_bootstrap="127.0.0.1:1", **settings))
    _apps.append(app)
    consumer = app.consumer
    assert isinstance(consumer, WorkerConsumer)
    return consumer


def test_both_transports_use_the_worker_consumer() -> None:
    _consumer()  # kafka://
    _consumer(broker_true_end_offsets=True)  # tansu://


def test_the_seek_happens_with_the_flow_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = _consumer()
    seen: list[bool] = []

    async def faust_seek(self: object) -> None:  # Faust's own seek, without a broker
        seen.append(consumer.flow_active)

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", faust_seek)
    assert consumer.flow_active  # as at a worker's first assignment
    asyncio.run(consumer.perform_seek())
    assert seen == [False]
    assert consumer.suspend_flow.is_set()  # the fetch loop leaves its pass over old records


def test_a_stopped_flow_stays_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = _consumer()
    consumer.stop_flow()  # a rebalance already stopped it

    async def faust_seek(self: object) -> None:
        return None

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", faust_seek)
    asyncio.run(consumer.perform_seek())
    assert not consumer.flow_active


def test_partitions_never_committed_are_read_from_their_beginning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = _consumer()
    never, zero, later = (TP("signals", p) for p in range(3))
    sought: list[tuple[TP, int]] = []

    async def aiokafka_seek_to_committed(self: object) -> dict[TP, int | None]:
        return {never: None, zero: 0, later: 42}  # it sought only `later`

    async def seek(self: object, tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", aiokafka_seek_to_committed)
    monkeypatch.setattr(faust_aiokafka.Consumer, "seek", seek)
    committed = asyncio.run(consumer.seek_to_committed())
    assert committed == {never: None, zero: 0, later: 42}
    assert sorted(sought) == [(never, 0), (zero, 0)]


def _consumer_on_a_new_loop() -> WorkerConsumer:
    """A consumer whose app (and so whose events) use a loop of its own, closed after."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    return _consumer()


async def _deliver(log: list[str], gate: asyncio.Event | None = None) -> str:
    if gate is not None:
        await gate.wait()
    log.append("delivered")
    return "ok"


def test_a_record_is_delivered_with_the_waits_shared_across_records() -> None:
    consumer = _consumer_on_a_new_loop()

    async def run() -> None:
        log: list[str] = []
        first = await consumer.wait_first(_deliver(log), consumer.suspend_flow.wait())
        shared = dict(consumer._flow_waiters or {})
        second = await consumer.wait_first(_deliver(log), consumer.suspend_flow.wait())
        assert log == ["delivered", "delivered"]
        assert first.results == second.results == ["ok"] and not second.stopped
        assert len(shared) == 3 and shared == consumer._flow_waiters  # not made anew
        await consumer.on_stop()
        await asyncio.sleep(0)
        assert all(w.cancelled() for w in shared.values())

    _apps[-1].loop.run_until_complete(run())  # the loop the consumer's events use


def test_suspending_the_flow_cancels_a_delivery_that_waits() -> None:
    consumer = _consumer_on_a_new_loop()

    async def run() -> None:
        log: list[str] = []
        gate = asyncio.Event()  # a full stream buffer: the delivery waits
        waiting = asyncio.ensure_future(
            consumer.wait_first(_deliver(log, gate), consumer.suspend_flow.wait())
        )
        await asyncio.sleep(0.01)
        consumer.stop_flow()  # a rebalance
        result = await asyncio.wait_for(waiting, 1)
        gate.set()
        await asyncio.sleep(0.01)
        assert result.stopped and log == []  # cancelled, never delivered
        # while the flow is suspended the call is mode's own, unchanged
        consumer.resume_flow()
        consumer.stop_flow()
        result = await consumer.wait_first(_deliver(log), consumer.suspend_flow.wait())
        assert log == ["delivered"] and result.results  # delivered as mode would
        await consumer.on_stop()

    _apps[-1].loop.run_until_complete(run())  # the loop the consumer's events use


def test_a_failed_delivery_raises_out_of_the_fetch_loop() -> None:
    consumer = _consumer_on_a_new_loop()

    async def fail() -> None:
        raise RuntimeError("boom")

    async def run() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await consumer.wait_first(fail(), consumer.suspend_flow.wait())
        await consumer.on_stop()

    _apps[-1].loop.run_until_complete(run())  # the loop the consumer's events use
