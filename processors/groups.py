"""Preference groups: which groups a signal belongs to.

Explicit groups come from the event (``user:``, ``team:``, ``org:``, ``global``);
derived groups from rules over ``metadata`` in the settings file. Rules are
validated when settings load, so a bad rule stops start-up with its name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

GROUP_KINDS = ("user", "team", "org", "global")
Operator = Literal["equals", "glob", "prefix", "in", "exists"]
OPERATORS: tuple[str, ...] = get_args(Operator)
_VALUE_RE = re.compile(r"^[A-Za-z0-9_.@/*\-]+$")


class DerivedGroupRule(BaseModel):
    """``group`` applies when ``metadata[key] <op> value``; ``{value}`` in group is the match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    op: Operator = "equals"
    value: str | list[str] | None = None
    group: str = Field(min_length=3, description="e.g. 'persona:{value}' or 'path:billing'")

    @field_validator("op", mode="before")
    @classmethod
    def _known_operator(cls, value: Any, info: ValidationInfo) -> Any:
        """Name the rule: with several rules, an index alone is hard to trace back."""
        if value not in OPERATORS:
            name = info.data.get("name", "?")
            raise ValueError(
                f"rule {name}: field op has unknown operator {value!r}; "
                f"use one of {', '.join(OPERATORS)}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> DerivedGroupRule:
        if ":" not in self.group:
            raise ValueError(f"rule {self.name}: group {self.group!r} must look like kind:value")
        kind = self.group.split(":", 1)[0]
        if kind in GROUP_KINDS:
            raise ValueError(f"rule {self.name}: derived groups may not use the {kind}: kind")
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError(f"rule {self.name}: op 'in' needs a list value")
        if self.op in ("equals", "glob", "prefix") and not isinstance(self.value, str):
            raise ValueError(f"rule {self.name}: op {self.op!r} needs a string value")
        return self

    def match(self, metadata: Mapping[str, str]) -> str | None:
        """The group this rule puts the metadata in, or None."""
        actual = metadata.get(self.key)
        if actual is None:
            return None
        hit = False
        if self.op == "exists":
            hit = True
        elif self.op == "equals":
            hit = actual == self.value
        elif self.op == "prefix":
            hit = isinstance(self.value, str) and actual.startswith(self.value)
        elif self.op == "glob":
            hit = isinstance(self.value, str) and fnmatch.fnmatchcase(actual, self.value)
        elif self.op == "in":
            hit = isinstance(self.value, list) and actual in self.value
        if not hit:
            return None
        return self.group.replace("{value}", actual)


def scope_of(group: str) -> str:
    """The scope a group belongs to: ``user``, ``team``, ``org``, ``global`` or a derived kind."""
    return "global" if group == "global" else group.split(":", 1)[0]


def resolve_groups(
    user_id: str,
    team_id: str | None,
    org_id: str | None,
    metadata: Mapping[str, str],
    rules: tuple[DerivedGroupRule, ...],
) -> list[str]:
    """Every group one signal is attributed to, narrowest first, without duplicates."""
    groups = [f"user:{user_id}"]
    if team_id:
        groups.append(f"team:{team_id}")
    if org_id:
        groups.append(f"org:{org_id}")
    for rule in rules:
        derived = rule.match(metadata)
        if derived is not None and derived not in groups:
            groups.append(derived)
    groups.append("global")
    return groups
