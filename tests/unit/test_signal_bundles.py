"""Signal bundles: each signal lands in its group's partition, in order, within the caps."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from processors.signals import signal_problem
from streams import signal_bundles
from streams.signal_bundles import bundle, unbundle


def _signal(n: int, group: str, text: str = "") -> dict:
    return {
        "signal_id": f"e{n}|{group}",
        "group": group,
        "origin": [0, n, 0],
        "event_id": f"e{n}",
        "type": "explanation",
        "timestamp": 1_700_000_000_000 + n,
        "user_id": "u",
        "org_id": None,
        "interaction_id": f"i{n}",
        "joined": True,
        "query": None,
        "response": None,
        "payload": {"text": text},
        "flags": [],
    }


def test_each_signal_goes_to_its_groups_murmur2_partition_in_order() -> None:
    groups = ["user:a", "team:t", "org:o", "global", "user:b", "persona:x"]
    signals = [_signal(n, groups[n % len(groups)]) for n in range(60)]
    everything = list(range(4))
    seen: dict[int, list[dict]] = {}
    for partition, value in bundle(signals, 4):
        for signal in unbundle(value):
            expected = DefaultPartitioner()(signal["group"].encode(), everything, everything)
            assert partition == expected
            seen.setdefault(partition, []).append(signal)
    assert sorted(s["event_id"] for part in seen.values() for s in part) == sorted(
        s["event_id"] for s in signals
    )
    for part in seen.values():  # order kept within each partition
        assert [s["origin"][1] for s in part] == sorted(s["origin"][1] for s in part)


def test_bundles_are_capped_in_signals_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal_bundles, "SIGNALS_PER_BUNDLE", 10)
    counts = [
        len(unbundle(value)) for _, value in bundle([_signal(n, "global") for n in range(25)], 4)
    ]
    assert counts == [10, 10, 5]
    monkeypatch.setattr(signal_bundles, "BUNDLE_BYTES", 2_000)
    big = [_signal(n, "global", "x" * 600) for n in range(6)]
    values = [value for _, value in bundle(big, 4)]
    wrapper = len(b'{"signals":[]}')
    assert len(values) == 3 and all(len(v) <= 2_000 + wrapper for v in values)
    assert [s["event_id"] for v in values for s in unbundle(v)] == [f"e{n}" for n in range(6)]


def test_a_lone_signal_is_read_as_a_bundle_of_one() -> None:
    lone = _signal(1, "user:a")
    assert unbundle(orjson.dumps(lone)) == [lone]
    with pytest.raises(orjson.JSONDecodeError):
        unbundle(b"not json")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"group": None}, "field group"),
        ({"timestamp": "yesterday"}, "field timestamp"),
        ({"origin": [1, 2]}, "field origin"),
        ({"origin": None}, None),
        ({"payload": []}, "field payload"),
    ],
)
def test_signal_problem_names_the_field(change: dict, problem: str | None) -> None:
    found = signal_problem({**_signal(1, "user:a"), **change})
    assert (found is None) if problem is None else (found is not None and problem in found)
    assert signal_problem(["not", "a", "signal"]) == "not an object: list"
