"""Signal bundles: partitioning as Kafka keys would, order, caps, replays stay exact."""

from __future__ import annotations

from collections import Counter

import orjson
from aiokafka.partitioner import DefaultPartitioner

from processors.aggregate import apply_signals, stats_view
from processors.join import JoinConfig, process_event
from processors.policy import LearningPolicy
from processors.signals import _problem, signal_problem
from schemas import from_json_event
from streams import signal_bundles
from streams.signal_bundles import POSITION_STRIDE, bundle, group_partition, unbundle
from tests.factories import feedback, interaction

PARTITIONS = 4


def _signals(n_interactions: int, offset0: int = 0):
    """Every signal the join releases for ``n_interactions`` interactions and a rating each."""
    out = []
    offset = offset0
    for i in range(n_interactions):
        slot = None
        user = f"u{i % 7}"
        for event in (
            interaction(f"i{i}", user=user, team=f"t{i % 3}"),
            feedback(f"r{i}", "rating", f"i{i}", user=user, team=f"t{i % 3}"),
        ):
            record, errors = from_json_event(event)
            assert not errors
            slot, signals, _ = process_event(slot, record, (0, offset), 0, JoinConfig())
            offset += 1
            out.extend(signals)
    return out


def test_each_signal_lands_where_a_message_keyed_by_its_group_would() -> None:
    partitioner = DefaultPartitioner()
    everything = list(range(PARTITIONS))
    for partition, value in bundle(_signals(20), PARTITIONS):
        for signal in unbundle(value):
            expected = partitioner(signal["group"].encode(), everything, everything)
            assert partition == expected == group_partition(signal["group"], PARTITIONS)


def test_bundles_keep_every_signal_once_and_in_order_per_partition() -> None:
    signals = _signals(30)
    bundled = bundle(signals, PARTITIONS)
    assert len(bundled) <= PARTITIONS  # 240 signals: one message per partition
    for partition in range(PARTITIONS):
        inside = [s for p, v in bundled if p == partition for s in unbundle(v)]
        mine = [s for s in signals if group_partition(s["group"], PARTITIONS) == partition]
        assert inside == mine


def test_bundles_are_capped_in_signals_and_bytes(monkeypatch) -> None:
    signals = _signals(50)
    monkeypatch.setattr(signal_bundles, "SIGNALS_PER_BUNDLE", 7)
    bundled = bundle(signals, 1)
    assert [len(unbundle(v)) for _, v in bundled][:-1] == [7] * (len(bundled) - 1)
    assert [s for _, v in bundled for s in unbundle(v)] == signals
    monkeypatch.setattr(signal_bundles, "SIGNALS_PER_BUNDLE", 10_000)
    monkeypatch.setattr(signal_bundles, "BUNDLE_BYTES", 2_000)
    bundled = bundle(signals, 1)
    assert len(bundled) > 1
    assert all(len(v) <= 2_000 + 20 for _, v in bundled)  # + the envelope
    assert [s for _, v in bundled for s in unbundle(v)] == signals


def test_a_lone_signal_is_read_as_a_bundle_of_one() -> None:
    signal = _signals(1)[0]
    assert unbundle(orjson.dumps(signal)) == [signal]


def test_signal_problem_names_the_bad_field_and_passes_good_signals() -> None:
    good = _signals(1)[0]
    assert signal_problem(good) is None
    assert signal_problem([1]) == "not an object: list"
    assert signal_problem({**good, "group": 3}) == "field group: expected str"
    assert signal_problem({**good, "origin": [1, 2]}) is not None
    assert signal_problem({**good, "origin": None}) is None


def test_the_quick_check_agrees_with_the_field_by_field_one() -> None:
    """The one-expression path may only accept what the field by field check accepts."""
    good = _signals(1)[0]
    odd: list[object] = [None, True, 1, 1.5, "x", [], {}, [1, 2, 3], [1, "2", 3], [1, 2], (1, 2, 3)]
    variants: list[object] = [good, [good], "signal", None]
    for name in good:
        variants.append({k: v for k, v in good.items() if k != name})
        variants.extend({**good, name: value} for value in odd)
    for value in variants:
        assert signal_problem(value) == _problem(value), value


def _positions(bundled, first_offset: int):
    """``(position, signal)`` as the aggregate agent reads the bundles of one partition."""
    return [
        (offset * POSITION_STRIDE + index, signal)
        for offset, (_, value) in enumerate(bundled, start=first_offset)
        for index, signal in enumerate(unbundle(value))
    ]


def test_replays_bundled_differently_are_not_counted_twice(monkeypatch) -> None:
    signals = [s for s in _signals(40) if s["group"] == "team:t1"]
    policy = LearningPolicy().team
    once = signal_bundles.bundle(signals, 1)
    state, _ = apply_signals(None, _positions(once, 0), 0, policy)
    expected = Counter(stats_view(state)["counts"])
    assert expected["rating"] > 1
    # the aggregator's own replay (same messages, same positions)
    state, _ = apply_signals(state, _positions(once, 0), 0, policy)
    # the join replayed after a crash: same signals, other bundles, later offsets
    monkeypatch.setattr(signal_bundles, "SIGNALS_PER_BUNDLE", 3)
    again = signal_bundles.bundle(signals, 1)
    assert len(again) > len(once)
    state, _ = apply_signals(state, _positions(again, 100), 0, policy)
    assert Counter(stats_view(state)["counts"]) == expected
