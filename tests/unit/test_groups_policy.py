"""Group resolution and rule validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from learnloop.settings import ConfigError, load_settings
from processors.groups import DerivedGroupRule, resolve_groups, scope_of
from processors.policy import LearningPolicy


def test_explicit_groups_narrowest_first() -> None:
    assert resolve_groups("u", "t", "o", {}, ()) == ["user:u", "team:t", "org:o", "global"]
    assert resolve_groups("u", None, None, {}, ()) == ["user:u", "global"]


@pytest.mark.parametrize(
    ("op", "value", "actual", "hit"),
    [
        ("equals", "eu", "eu", True),
        ("equals", "eu", "us", False),
        ("prefix", "services/", "services/x", True),
        ("glob", "services/*/api.py", "services/billing/api.py", True),
        ("glob", "services/*/api.py", "lib/api.py", False),
        ("in", ["eu", "uk"], "uk", True),
        ("in", ["eu", "uk"], "us", False),
    ],
)
def test_rule_operators(op: str, value, actual: str, hit: bool) -> None:
    rule = DerivedGroupRule(name="r", key="k", op=op, value=value, group="region:{value}")
    assert (rule.match({"k": actual}) is not None) is hit


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "r", "key": "k", "value": "x", "group": "nocolon"},
        {"name": "r", "key": "k", "value": "x", "group": "team:x"},
        {"name": "r", "key": "k", "op": "in", "value": "x", "group": "a:b"},
        {"name": "r", "key": "k", "op": "regex", "value": "x", "group": "a:b"},
    ],
)
def test_invalid_rules_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        DerivedGroupRule(**bad)


def test_policy_defaults_follow_the_brief() -> None:
    policy = LearningPolicy()
    assert policy.for_scope("user").min_users == 1
    assert policy.for_scope("team").min_users == 3
    assert policy.for_scope("org").min_users == 5 and policy.for_scope("org").requires_approval
    assert policy.for_scope("global").requires_approval
    assert policy.for_scope("persona") == policy.derived
    assert scope_of("global") == "global" and scope_of("path:a/b") == "path"


def test_unknown_operator_error_names_the_rule_and_the_field() -> None:
    rules = [
        {"name": "billing", "key": "path", "op": "glob", "value": "b/**", "group": "path:b"},
        {"name": "by-path", "key": "path", "op": "regex", "value": ".*", "group": "path:x"},
    ]
    with pytest.raises(ConfigError) as caught:
        load_settings(kafka_bootstrap="localhost:9092", derived_groups=rules)
    message = str(caught.value)
    assert "rule by-path" in message
    assert "derived_groups.1.op" in message and "LEARNLOOP_DERIVED_GROUPS__1__OP" in message
    assert "'regex'" in message and "equals, glob, prefix, in, exists" in message
    assert "billing" not in message
