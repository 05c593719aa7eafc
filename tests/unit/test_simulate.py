"""The user simulator: deterministic, valid on the wire, and clear about bad scenario files."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from learnloop.bench.truth import build_truth, classify, rule_matches
from learnloop.simulate.generator import generate, to_jsonl
from learnloop.simulate.scenario import (
    Match,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)
from processors.policy import LearningPolicy
from schemas import EventCodec, WireFormat, from_json_event

BUILTINS = sorted(builtin_scenarios())


def test_builtin_scenarios_are_split_into_tuning_and_evaluation() -> None:
    assert any(n.startswith("tuning/") for n in BUILTINS)
    assert any(n.startswith("evaluation/") for n in BUILTINS)
    names = [load_scenario(n).name for n in BUILTINS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", BUILTINS)
def test_same_seed_gives_byte_identical_stream(name: str) -> None:
    scenario = load_scenario(name)
    first = to_jsonl(generate(scenario))
    assert first == to_jsonl(generate(load_scenario(name)))
    assert first != to_jsonl(generate(scenario, seed=scenario.seed + 1))


def test_rounds_generated_separately_equal_the_whole_stream() -> None:
    scenario = load_scenario("devtools")
    whole = generate(scenario)
    parts = [e for r in range(scenario.rounds) for e in generate(scenario, rounds=[r])]
    assert to_jsonl(parts) == to_jsonl(whole)


def test_cli_output_is_byte_identical_across_processes() -> None:
    command = [sys.executable, "-m", "learnloop", "simulate", "travel", "--seed", "5"]
    runs = [subprocess.run(command, capture_output=True, timeout=60, check=True) for _ in (1, 2)]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.count(b"\n") > 100


@pytest.mark.parametrize("name", BUILTINS)
def test_every_generated_event_is_valid_and_encodes(name: str) -> None:
    codec = EventCodec()
    for sim in generate(load_scenario(name)):
        record, errors = from_json_event(sim.event)
        assert record is not None, (sim.event["event_id"], errors)
        decoded = codec.decode(codec.encode(record, WireFormat.AVRO))
        kind = record["type"]
        assert decoded["event_id"] == record["event_id"] and decoded[kind] == record[kind]


def test_streams_carry_every_kind_of_feedback_and_noise() -> None:
    events = [e for n in BUILTINS for e in generate(load_scenario(n))]
    types = Counter(e.event["type"] for e in events)
    assert set(types) == {"interaction", "rating", "explanation", "edit", "engagement", "tool_call"}
    ratings = [e.event for e in events if e.event["type"] == "rating"]
    assert any("value" in r for r in ratings) and any("score" in r for r in ratings)
    kinds = {e.event["kind"] for e in events if e.event["type"] == "engagement"}
    assert {"dwell_ms", "copy", "abandon", "return_visit"} <= kinds
    statuses = {c["status"] for e in events for c in e.event.get("tool_calls", [])}
    assert {"ok", "error", "timeout"} <= statuses
    noise = Counter(e.noise for e in events)
    assert noise["chatter"] and noise["flipped"] and noise["duplicate"]
    assert any(e.respected is False for e in events) and any(e.respected for e in events)
    ids = Counter(e.event["event_id"] for e in events if e.noise != "duplicate")
    assert max(ids.values()) == 1  # only deliberate duplicates repeat an id


def test_start_moves_every_timestamp() -> None:
    scenario = load_scenario("devtools")
    start = datetime(2030, 1, 2, 3, 0, tzinfo=UTC)
    events = generate(scenario, start=start)
    assert events[0].event["timestamp"] == "2030-01-02T03:00:00Z"
    assert all(e.event["timestamp"] >= "2030-01-02T03:00:00Z" for e in events)


def test_changed_preferences_switch_half_way() -> None:
    scenario = load_scenario("devtools")
    prefs = {(e.round, e.pref) for e in generate(scenario) if e.user == "ivan" and e.pref}
    assert {p for r, p in prefs if r < 4} <= {"use-npm"}
    assert {p for r, p in prefs if r >= 4} <= {"use-pnpm"}


def _minimal() -> dict:
    text = builtin_scenarios()["tuning/devtools"]
    return yaml.safe_load(text)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(rounds="many"), "rounds"),
        (
            lambda d: d["orgs"][0]["teams"][0]["users"][1].update(prefers=["nope"]),
            "orgs.0.teams.0.users.1.prefers.0.id",
        ),
        (lambda d: d["preferences"][0].pop("match"), "preferences.0.match"),
        (lambda d: d["preferences"][2].update(colour="red"), "preferences.2.colour"),
        (
            lambda d: d["orgs"][0]["teams"][1]["users"].append({"id": "alice"}),
            "orgs.0.teams.1.users.5.id",
        ),
        (
            lambda d: (
                d["feedback"].update(rating=1.5)
                if "feedback" in d
                else d.update(feedback={"rating": 1.5})
            ),
            "feedback.rating",
        ),
        (lambda d: d["preferences"][2].update(opposes=["nobody"]), "preferences.2.opposes.0"),
        (
            lambda d: d["orgs"][0]["teams"][2]["users"][0]["prefers"][0].update(until_round=0),
            "orgs.0.teams.2.users.0.prefers.0.until_round",
        ),
    ],
)
def test_scenario_errors_name_the_field(mutate, field: str) -> None:
    data = _minimal()
    mutate(data)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(yaml.safe_dump(data), "mine.yaml")
    message = str(caught.value)
    assert message.startswith("mine.yaml: ")
    assert field in message, message


def test_unknown_scenario_and_bad_yaml_say_so(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="built-in: "):
        load_scenario("no-such-scenario")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(str(bad))


def test_cli_reports_scenario_errors_with_the_field(tmp_path: Path) -> None:
    data = _minimal()
    data["orgs"][0]["teams"][0]["users"][0]["prefers"] = ["ghost"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "learnloop", "simulate", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"orgs.0.teams.0.users.0.prefers.0.id" in result.stderr
    assert b"ghost" in result.stderr


def test_matching_is_by_whole_words_with_exclusions() -> None:
    npm = Match(any=[["npm"]], exclude=["pnpm"])
    assert rule_matches("Use npm, not yarn.", npm)
    assert not rule_matches("Use pnpm instead of npm.", npm)
    assert not rule_matches("Run pnpm.", Match(any=[["npm"]]))
    v1 = Match(any=[["v2"], ["v1", "don't"]])
    assert rule_matches("Don't use the v1 client.", v1)
    assert rule_matches("Use the V2 client.", v1)
    assert not rule_matches("Use the v1 client.", v1)


def test_truth_follows_the_policy() -> None:
    scenario = load_scenario("devtools")
    events = generate(scenario)
    truth = build_truth(scenario, events, LearningPolicy())
    groups = {(e.group, e.target) for e in truth.expectations}
    # the odd user's preference is expected only in its own user group
    assert ("user:zed", "pirate") in groups
    assert not any(t == "pirate" for g, t in groups if not g.startswith("user:"))
    assert classify("team:search", "Talk like a pirate.", truth)[0] == "minority"
    assert classify("team:platform", "Always reply in German.", truth)[0] == "foreign"
    assert classify("user:ivan", "Use npm, not yarn.", truth)[0] == "stale"
    assert classify("user:bob", "Meh.", truth)[0] == "unmatched"
    org = [e for e in truth.expectations if e.group.startswith("org:")]
    assert all(e.status == "proposed" for e in org)


def test_closed_loop_agent_follows_the_rules_it_knows() -> None:
    from learnloop.simulate.generator import Generator

    scenario = load_scenario("devtools")
    open_loop, closed = Generator(scenario), Generator(scenario)
    first_open, first_closed = open_loop.round(), closed.round(lambda user, pref: True)
    assert any(e.respected is False for e in first_open)
    on_topic = [e for e in first_closed if e.event["type"] == "interaction" and e.pref]
    assert on_topic and all(e.respected for e in on_topic)
    assert not any(e.event["type"] == "edit" for e in first_closed)
    # still deterministic for the same answers of ``knows``
    again = Generator(scenario).round(lambda user, pref: True)
    assert to_jsonl(again) == to_jsonl(first_closed)


def test_cli_writes_a_file_and_refuses_two_destinations(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "learnloop", "simulate", "support", "--out", str(out)]
    subprocess.run(command, capture_output=True, timeout=60, check=True)
    assert out.read_bytes() == to_jsonl(generate(load_scenario("support")))
    both = subprocess.run(
        [*command, "--http", "http://127.0.0.1:1"], capture_output=True, timeout=60, check=False
    )
    assert both.returncode == 2 and b"choose one of" in both.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "learnloop", "simulate", "--list"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"tuning/devtools" in listed.stdout and b"evaluation/support" in listed.stdout


def test_more_rounds_keep_the_first_ones_and_are_validated() -> None:
    scenario = load_scenario("devtools")
    longer = scenario.with_rounds(12)
    assert longer.rounds == 12
    first = [e for e in generate(longer) if e.round < scenario.rounds]
    assert to_jsonl(first) == to_jsonl(generate(scenario))
    with pytest.raises(ScenarioError, match="from_round"):
        scenario.with_rounds(3)  # the web team switches in round 4
