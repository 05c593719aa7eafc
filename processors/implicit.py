"""Case 0 of the brief: implicit negative signals read from a trajectory of tool calls."""

from __future__ import annotations

import json
from collections.abc import Sequence

from schemas.events import ToolCall

REPEATED_FAILURE = "repeated_tool_failure"
RETRY_LOOP = "retry_loop"
NONSENSE_ARGUMENTS = "nonsense_arguments"


def _nonsense(arguments: str) -> bool:
    """Arguments that look like JSON but do not parse, or parse to nothing useful."""
    text = arguments.strip()
    if not text:
        return False
    if text[0] in "{[":
        try:
            parsed = json.loads(text)
        except ValueError:
            return True
        return parsed in ({}, [])
    return text.lower() in ("null", "undefined", "nan", "none")


def trajectory_flags(calls: Sequence[ToolCall], retry_threshold: int = 3) -> list[str]:
    """Reasons to treat an interaction as a negative example; empty when none apply.

    - the same tool failed (error or timeout) twice or more;
    - the same tool was called ``retry_threshold`` times in a row (a retry loop);
    - any call carried arguments that cannot be what the tool expects.
    """
    flags: list[str] = []
    failures: dict[str, int] = {}
    run_name, run_length, longest = "", 0, 0
    for call in calls:
        if call["status"] != "ok":
            failures[call["name"]] = failures.get(call["name"], 0) + 1
        if call["name"] == run_name:
            run_length += 1
        else:
            run_name, run_length = call["name"], 1
        longest = max(longest, run_length)
    if any(count >= 2 for count in failures.values()):
        flags.append(REPEATED_FAILURE)
    if longest >= retry_threshold:
        flags.append(RETRY_LOOP)
    if any(_nonsense(call["arguments"]) for call in calls):
        flags.append(NONSENSE_ARGUMENTS)
    return flags
