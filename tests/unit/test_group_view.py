"""The API's view of group states: which groups still count a user (for forgetting)."""

from __future__ import annotations

from faust.utils import json as faust_json

from learnloop.api.group_view import GroupView
from processors.aggregate import apply_signals
from processors.policy import LearningPolicy
from tests.factories import feedback, interaction
from tests.unit.test_aggregate import signals_for


def test_a_user_is_found_by_the_id_they_were_counted_under_short_or_long() -> None:
    """Long ids are counted by their digest in the state; forgetting names the whole id."""
    short, long = "alice", "u" + "9" * 255
    view = GroupView("unused:9092", "changelog", 1)  # fed records directly, never started
    for group, user in (("team:search", short), ("org:acme", long)):
        events = [interaction("i-" + user[:8], user=user),
                  feedback("r-" + user[:8], "rating", "i-" + user[:8], user=user, value=1)]
        state, _ = apply_signals(
            None, list(enumerate(signals_for(events, group))), 0, LearningPolicy().team
        )
        # the changelog record as Faust's JSON codec writes it
        view._apply(faust_json.dumps(group), faust_json.dumps(state))
    assert view.groups_with_contributor(short) == ["team:search"]
    assert view.groups_with_contributor(long) == ["org:acme"]
    assert view.groups_with_contributor("u" + "9" * 254 + "8") == []
