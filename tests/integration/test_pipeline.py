"""The pipeline on the real embedded broker: exact counts, restarts, ownership."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import read_group_states, wait_until
from tests.integration.streams_helpers import (
    actual_counts,
    emit,
    expected_counts,
    make_stream,
    missing_signals,
    signals_in_topic,
)

pytestmark = pytest.mark.integration


def wait_converged(env, expected, timeout_s: float, events=None) -> None:
    """Wait until the group-state changelog holds exactly ``expected``; else show the diff."""
    last_diff: dict = {}

    def check() -> bool:
        actual = actual_counts(read_group_states(env))
        last_diff.clear()
        last_diff.update(
            {
                group: {
                    "expected": dict(expected.get(group, {})),
                    "actual": dict(actual.get(group, {})),
                }
                for group in set(expected) | set(actual)
                if expected.get(group) != actual.get(group)
            }
        )
        return not last_diff

    try:
        wait_until(check, timeout_s)
    except AssertionError:
        on_topic = signals_in_topic(env, set(last_diff))
        for group, diff in last_diff.items():
            diff["signals on topic"] = dict(on_topic.get(group, {}))
        if events is not None and "org:acme" in last_diff:
            last_diff["org:acme"]["missing"] = missing_signals(env, events, "org:acme")
        raise AssertionError(f"per-group counts differ: {last_diff}") from None


def test_counts_are_exact_and_duplicates_ignored(stack_env, workers) -> None:
    worker = workers()
    worker.wait_ready()
    events = make_stream(300)
    emit(stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"], events)
    expected = expected_counts(events)
    wait_converged(stack_env, expected, 60)
    assert worker.metric("learnloop_duplicates_total") >= 1


def test_sigkill_mid_stream_then_restart_keeps_counts_exact(stack_env, workers) -> None:
    bootstrap, topic = stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"]
    events = make_stream(3000, seed=11)
    first = workers("first")
    first.wait_ready()
    sender = threading.Thread(target=emit, args=(bootstrap, topic, events[: len(events) // 2], 100))
    sender.start()
    # kill while the worker is busy: some events consumed, more still arriving
    wait_until(lambda: first.metric("learnloop_events_in_total") > 500, 60, 0.1)
    first.kill()
    sender.join()
    second = workers("second")
    second.wait_ready()
    emit(bootstrap, topic, events[len(events) // 2 :])
    wait_converged(stack_env, expected_counts(events), 120, events)


def test_two_workers_split_groups_and_failover_loses_nothing(stack_env, workers) -> None:
    bootstrap, topic = stack_env["LEARNLOOP_KAFKA_BOOTSTRAP"], stack_env["LEARNLOOP_TOPICS__EVENTS"]
    events = make_stream(1500, seed=5)
    a, b = workers("a"), workers("b")
    a.wait_ready()
    b.wait_ready()
    emit(bootstrap, topic, events[:1000])
    owned = wait_until(
        lambda: (
            (a.metric("learnloop_groups_owned"), b.metric("learnloop_groups_owned"))
            if a.metric("learnloop_groups_owned") and b.metric("learnloop_groups_owned")
            else None
        ),
        60,
    )
    assert owned[0] > 0 and owned[1] > 0  # both own some groups
    b.kill()
    time.sleep(1)
    emit(bootstrap, topic, events[1000:])
    wait_converged(stack_env, expected_counts(events), 120, events)
