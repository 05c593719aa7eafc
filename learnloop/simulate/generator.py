"""The seeded, deterministic event generator.

One ``random.Random`` seeded from the scenario name and the seed drives every
choice, users are visited in file order and ids and timestamps are derived from
positions, so the same scenario and seed always give a byte-identical stream.
Each event comes with its *truth* (round, user, the preference the interaction
was about, whether the response respected it) that the benchmark scores against
and that never goes on the wire.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from learnloop.simulate.scenario import Org, Preference, Scenario, Team, Tool, User


@dataclass(frozen=True, slots=True)
class SimEvent:
    """An event in the brief's JSON form and the hidden truth behind it."""

    event: dict[str, Any]
    round: int
    user: str
    team: str
    org: str
    pref: str | None  # what the interaction was about; None when off-topic
    respected: bool | None
    tool_failed: str | None = None  # the tool that failed in this interaction
    noise: str | None = None  # "chatter", "flipped", "duplicate"


Knows = Callable[[str, str], bool]  # (user, preference) -> the agent's context has its rule


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Round:
    """Builds the events of one user's interactions in one round."""

    def __init__(self, scenario: Scenario, rng: random.Random, seed: int, start: datetime) -> None:
        self.s = scenario
        self.rng = rng
        self.seed = seed
        self.start = start
        self.knows: Knows | None = None

    def events(self, round_: int, org: Org, team: Team, user: User, slot: int) -> list[SimEvent]:
        rng, s = self.rng, self.s
        count = int(user.activity) + (1 if rng.random() < user.activity % 1 else 0)
        out: list[SimEvent] = []
        for k in range(count):
            base_id = f"{s.name}-s{self.seed}-r{round_:03d}-{user.id}-{k}"
            moment = self.start + timedelta(
                minutes=round_ * s.round_minutes, seconds=slot * 7 + k * 3
            )
            out += self._interaction(round_, org, team, user, base_id, moment)
        return out

    def _interaction(
        self, round_: int, org: Org, team: Team, user: User, base_id: str, moment: datetime
    ) -> list[SimEvent]:
        rng, s = self.rng, self.s
        active = [h.id for h in user.prefers if h.active(round_)]
        pref: Preference | None = None
        if active and rng.random() >= s.noise.off_topic:
            pref = s.preference(rng.choice(active))
        respected: bool | None = None
        if pref is None:
            query = rng.choice(s.noise.off_topic_queries)
            response = "Here is a short answer based on what I found."
        else:
            respected = rng.random() < s.respect_rate
            if self.knows is not None and self.knows(user.id, pref.id):
                respected = True  # closed loop: the agent follows the rule it was given
            query = rng.choice(pref.queries)
            response = rng.choice(pref.respecting if respected else pref.violating)
        calls, failed = self._tool_calls(team)
        envelope = {
            "timestamp": _stamp(moment),
            "user_id": user.id,
            "team_id": team.id,
            "org_id": org.id,
            "metadata": {"source": "simulator", "scenario": s.name},
        }
        truth = SimEvent({}, round_, user.id, team.id, org.id, pref.id if pref else None, respected)
        interaction = {
            "event_id": f"{base_id}-i",
            "type": "interaction",
            **envelope,
            "interaction_id": f"{base_id}-i",
            "query": query,
            "response": response,
            "model": "sim-agent-1",
            "tool_calls": calls,
        }
        out = [replace(truth, event=interaction, tool_failed=failed.name if failed else None)]
        feedback = dict(envelope, interaction_id=f"{base_id}-i")
        later = moment

        def add(suffix: str, type_: str, payload: dict[str, Any], noise: str | None = None) -> None:
            nonlocal later
            later = later + timedelta(seconds=1)
            event = {
                "event_id": f"{base_id}-{suffix}",
                "type": type_,
                **feedback,
                "timestamp": _stamp(later),
                **payload,
            }
            out.append(replace(truth, event=event, noise=noise))

        if failed is not None and rng.random() < 0.5:
            add("t", "tool_call", self._call(failed, failed_now=rng.random() < failed.failure_rate))
        rate = s.feedback.rate if user.feedback_rate is None else user.feedback_rate
        if rng.random() < rate:
            self._feedback(pref, respected, add)
        if out[1:] and rng.random() < s.noise.duplicate:
            copy = rng.choice(out[1:])
            out.append(replace(truth, event=dict(copy.event), noise="duplicate"))
        return out

    def _feedback(self, pref: Preference | None, respected: bool | None, add: Any) -> None:
        rng, f, noise = self.rng, self.s.feedback, self.s.noise
        good = respected is not False  # off-topic answers are fine
        if rng.random() < f.rating:
            flipped = rng.random() < noise.rating_flip
            positive = good != flipped
            tag = "flipped" if flipped else None
            if rng.random() < f.score:
                score = rng.choice([4.0, 5.0]) if positive else rng.choice([1.0, 2.0])
                add("r", "rating", {"score": score, "scale": 5.0}, tag)
            else:
                add("r", "rating", {"value": 1 if positive else -1}, tag)
        if pref is not None and respected is False:
            if rng.random() < f.explanation:
                add("x", "explanation", {"text": rng.choice(pref.explanations)})
            if pref.edits and rng.random() < f.edit:
                edit = rng.choice(pref.edits)
                add("d", "edit", {"original": edit.original, "edited": edit.edited})
        if rng.random() < noise.chatter:
            add("c", "explanation", {"text": rng.choice(noise.chatter_texts)}, "chatter")
        if rng.random() < f.engagement:
            if pref is None:
                add("g", "engagement", {"kind": "return_visit", "value": 1.0})
            elif good:
                kind = rng.choice(["copy", "conversion", "dwell_ms"])
                value = float(rng.randrange(20_000, 90_000)) if kind == "dwell_ms" else 1.0
                add("g", "engagement", {"kind": kind, "value": value})
            else:
                kind = rng.choice(["abandon", "dwell_ms"])
                value = float(rng.randrange(500, 4_000)) if kind == "dwell_ms" else 1.0
                add("g", "engagement", {"kind": kind, "value": value})

    def _tool_calls(self, team: Team) -> tuple[list[dict[str, Any]], Tool | None]:
        rng = self.rng
        if not team.tools or rng.random() >= self.s.feedback.tool_use:
            return [], None
        tool = rng.choice(team.tools)
        calls: list[dict[str, Any]] = []
        for _ in range(1 + tool.retries):  # agents retry a failing call a few times
            failed = rng.random() < tool.failure_rate
            calls.append(self._call(tool, failed))
            if not failed:
                break
        return calls, tool if any(c["status"] != "ok" for c in calls) else None

    def _call(self, tool: Tool, failed_now: bool) -> dict[str, Any]:
        rng = self.rng
        return {
            "name": tool.name,
            "arguments": orjson.dumps({"q": rng.choice(["a", "b", "c"]), "n": 5}).decode(),
            "status": tool.status if failed_now else "ok",
            "error": (tool.error or f"{tool.name} failed") if failed_now else None,
            "latency_ms": float(rng.randrange(20, 900)),
        }


class Generator:
    """Round by round, for a closed loop: ``knows`` says which rules the agent was given."""

    def __init__(
        self, scenario: Scenario, seed: int | None = None, start: datetime | None = None
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        rng = random.Random(f"{scenario.name}:{self.seed}")  # noqa: S311  (str seeds are stable)
        self._builder = _Round(scenario, rng, self.seed, start or scenario.start)
        self._next = 0

    def round(self, knows: Knows | None = None) -> list[SimEvent]:
        """The next round's events. With ``knows``, a response about a preference whose
        rule the user's agent has in context respects it; the stream is then
        deterministic for the same answers of ``knows``, which depend on the run."""
        round_ = self._next
        if round_ >= self.scenario.rounds:
            raise IndexError(f"the scenario has {self.scenario.rounds} rounds")
        self._next += 1
        self._builder.knows = knows
        events: list[SimEvent] = []
        for slot, (org, team, user) in enumerate(self.scenario.members()):
            events += self._builder.events(round_, org, team, user, slot)
        return events


def generate(
    scenario: Scenario,
    seed: int | None = None,
    start: datetime | None = None,
    rounds: Iterable[int] | None = None,
) -> list[SimEvent]:
    """The whole stream (or only ``rounds`` of it), in the order it is sent (open loop)."""
    generator = Generator(scenario, seed, start)
    wanted = set(range(scenario.rounds) if rounds is None else rounds)
    out: list[SimEvent] = []
    for round_ in range(scenario.rounds):
        # every round draws the same numbers whether or not it is kept, so rounds
        # generated separately equal the same rounds of the whole stream
        events = generator.round()
        if round_ in wanted:
            out += events
    return out


def by_round(events: Iterable[SimEvent]) -> Iterator[tuple[int, list[SimEvent]]]:
    """Consecutive events grouped by their round."""
    current: list[SimEvent] = []
    for event in events:
        if current and event.round != current[0].round:
            yield current[0].round, current
            current = []
        current.append(event)
    if current:
        yield current[0].round, current


def to_jsonl(events: Iterable[SimEvent]) -> bytes:
    """The wire-visible stream as JSON lines (keys sorted, so bytes are stable)."""
    return b"".join(orjson.dumps(e.event, option=orjson.OPT_SORT_KEYS) + b"\n" for e in events)
