"""Scenario files: who the simulated users are and what they secretly want.

A scenario is a YAML file a user can write. It names organisations, teams and
users; a catalogue of *preferences* (how a response can respect or violate
each, how users phrase their complaints, how they edit, and the terms a learned
rule must contain to count as having learned it); and the probabilities of each
kind of feedback and noise. Users hold preferences, optionally only from or
until a round, so a preference can change half-way. The models validate the
whole file up front and every error names the field at fault
(``orgs.0.teams.1.users.2.prefers.0.id: unknown preference 'x'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from learnloop.errors import LearnloopError

_ID = r"^[A-Za-z0-9_.@\-]+$"


class ScenarioError(LearnloopError):
    """A scenario file that cannot be used, with one line per field at fault."""


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Edit(Strict):
    """How a user rewrites a violating response into one that respects the preference."""

    original: str = Field(min_length=1)
    edited: str = Field(min_length=1)


class Match(Strict):
    """When a learned rule's text counts as this preference (see :func:`rule_matches`)."""

    any: list[list[str]] = Field(
        min_length=1,
        description="alternatives; a rule matches if it contains every term of one of them",
    )
    exclude: list[str] = Field(default_factory=list, description="terms a match must not contain")


class Preference(Strict):
    """A hidden preference: what it is, how responses show it, how users complain."""

    id: str = Field(pattern=_ID)
    description: str = Field(min_length=1)
    queries: list[str] = Field(min_length=1)
    respecting: list[str] = Field(min_length=1, description="responses that respect it")
    violating: list[str] = Field(min_length=1, description="responses that violate it")
    explanations: list[str] = Field(min_length=1, description="complaints, phrased many ways")
    edits: list[Edit] = Field(default_factory=list)
    match: Match
    opposes: list[str] = Field(
        default_factory=list, description="preferences this one contradicts (dissenters)"
    )


class Tool(Strict):
    """A tool the team's agent calls, and how often it fails for them."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:\-]+$")
    failure_rate: float = Field(ge=0, le=1)
    status: str = Field(default="error", pattern=r"^(error|timeout)$")
    error: str = ""
    retries: int = Field(default=2, ge=0, le=5, description="the agent retries a failed call")
    match: Match


class Holding(Strict):
    """A user's preference, held in rounds ``[from_round, until_round)``."""

    id: str = Field(pattern=_ID)
    from_round: int = Field(default=0, ge=0)
    until_round: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Holding:
        if self.until_round is not None and self.until_round <= self.from_round:
            raise ValueError("until_round must be greater than from_round")
        return self

    def active(self, round_: int) -> bool:
        return self.from_round <= round_ and (self.until_round is None or round_ < self.until_round)


class User(Strict):
    id: str = Field(pattern=_ID)
    prefers: list[Holding] = Field(default_factory=list)
    activity: float = Field(default=1.0, gt=0, le=4, description="interactions per round")
    feedback_rate: float | None = Field(
        default=None, ge=0, le=1, description="overrides feedback.rate for this user"
    )

    @model_validator(mode="before")
    @classmethod
    def _short_holdings(cls, data: Any) -> Any:
        """``prefers: [a, b]`` is short for ``prefers: [{id: a}, {id: b}]``."""
        if isinstance(data, dict) and isinstance(data.get("prefers"), list):
            data = dict(data)
            data["prefers"] = [{"id": p} if isinstance(p, str) else p for p in data["prefers"]]
        return data


class Team(Strict):
    id: str = Field(pattern=_ID)
    users: list[User] = Field(min_length=1)
    tools: list[Tool] = Field(default_factory=list)


class Org(Strict):
    id: str = Field(pattern=_ID)
    teams: list[Team] = Field(min_length=1)


class Feedback(Strict):
    """Probabilities of each kind of feedback on one interaction."""

    rate: float = Field(default=0.9, ge=0, le=1, description="any feedback at all")
    rating: float = Field(default=0.7, ge=0, le=1)
    score: float = Field(default=0.3, ge=0, le=1, description="share of ratings given as stars")
    explanation: float = Field(default=0.5, ge=0, le=1, description="on a violating response")
    edit: float = Field(default=0.2, ge=0, le=1, description="on a violating response")
    engagement: float = Field(default=0.5, ge=0, le=1)
    tool_use: float = Field(default=0.4, ge=0, le=1, description="interactions calling a tool")


class Noise(Strict):
    """What makes the stream realistic: mistakes, chatter, off-topic traffic, duplicates."""

    rating_flip: float = Field(default=0.05, ge=0, le=1, description="rating of the wrong sign")
    chatter: float = Field(default=0.1, ge=0, le=1, description="explanation saying nothing")
    off_topic: float = Field(default=0.15, ge=0, le=1, description="query outside preferences")
    duplicate: float = Field(default=0.02, ge=0, le=1, description="an event sent twice")
    chatter_texts: list[str] = Field(
        default_factory=lambda: [
            "thanks!",
            "hmm, not sure about this one",
            "ok",
            "meh",
            "interesting",
            "I'll check later",
        ]
    )
    off_topic_queries: list[str] = Field(
        default_factory=lambda: [
            "what's the weather like tomorrow?",
            "summarise this thread for me",
            "who is on call this week?",
        ]
    )


class Scenario(Strict):
    """A whole simulation: people, their hidden preferences, and the stream's shape."""

    name: str = Field(pattern=_ID)
    description: str = ""
    seed: int = 0
    start: datetime = Field(
        default=datetime.fromisoformat("2026-11-20T08:00:00+00:00"),
        description="timestamp of the first event; bench runs move it to just before now",
    )
    rounds: int = Field(default=8, ge=1, le=1000)
    round_minutes: int = Field(default=60, ge=1)
    respect_rate: float = Field(
        default=0.25, ge=0, le=1, description="chance the agent already respects a preference"
    )
    feedback: Feedback = Feedback()
    noise: Noise = Noise()
    preferences: list[Preference] = Field(min_length=1)
    orgs: list[Org] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        known = {p.id for p in self.preferences}
        if len(known) != len(self.preferences):
            raise ValueError("preferences: ids must be unique")
        for i, pref in enumerate(self.preferences):
            for j, other in enumerate(pref.opposes):
                if other not in known:
                    raise ValueError(f"preferences.{i}.opposes.{j}: unknown preference {other!r}")
        seen: set[str] = set()
        teams: set[str] = set()
        for o, org in enumerate(self.orgs):
            for t, team in enumerate(org.teams):
                if team.id in teams:
                    raise ValueError(f"orgs.{o}.teams.{t}.id: team {team.id!r} appears twice")
                teams.add(team.id)
                for u, user in enumerate(team.users):
                    where = f"orgs.{o}.teams.{t}.users.{u}"
                    if user.id in seen:
                        raise ValueError(f"{where}.id: user {user.id!r} appears twice")
                    seen.add(user.id)
                    for h, holding in enumerate(user.prefers):
                        if holding.id not in known:
                            raise ValueError(
                                f"{where}.prefers.{h}.id: unknown preference {holding.id!r}"
                            )
                        if holding.from_round >= self.rounds:
                            raise ValueError(
                                f"{where}.prefers.{h}.from_round: {holding.from_round} is not "
                                f"before the last round ({self.rounds})"
                            )
        return self

    def with_rounds(self, rounds: int) -> Scenario:
        """The same scenario over more (or fewer) rounds, validated again."""
        try:
            return Scenario.model_validate({**self.model_dump(), "rounds": rounds})
        except ValidationError as exc:
            raise ScenarioError(describe(exc, self.name)) from None

    def preference(self, pref_id: str) -> Preference:
        return next(p for p in self.preferences if p.id == pref_id)

    def members(self) -> Iterator[tuple[Org, Team, User]]:
        for org in self.orgs:
            for team in org.teams:
                for user in team.users:
                    yield org, team, user


def describe(exc: ValidationError, source: str) -> str:
    """One line per error: ``source: field.path: message``."""
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if not loc:  # a cross-field rule: its message names its own field
            lines.append(f"{source}: {message}")
        else:
            lines.append(f"{source}: {loc or '(top level)'}: {message}")
    return "\n".join(lines)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate YAML text as a scenario, or raise :class:`ScenarioError` naming each field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a mapping, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(describe(exc, source)) from None


BUILTIN = "learnloop.simulate"


def builtin_scenarios() -> dict[str, str]:
    """Built-in scenario names (``tuning/devtools``) -> their YAML text."""
    root = resources.files(BUILTIN).joinpath("scenarios")
    found: dict[str, str] = {}
    for split in ("tuning", "evaluation"):
        folder = root.joinpath(split)
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".yaml"):
                found[f"{split}/{entry.name.removesuffix('.yaml')}"] = entry.read_text()
    return found


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name (``devtools`` or ``tuning/devtools``) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ScenarioError(f"{name_or_path}: no such file")
        return parse_scenario(path.read_text(), str(path))
    builtins = builtin_scenarios()
    matches = [k for k in builtins if k == name_or_path or k.split("/", 1)[1] == name_or_path]
    if len(matches) != 1:
        raise ScenarioError(
            f"unknown scenario {name_or_path!r}; built-in: {', '.join(sorted(builtins))}"
        )
    return parse_scenario(builtins[matches[0]], matches[0])
