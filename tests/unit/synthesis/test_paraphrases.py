"""Paraphrases cluster: people who ask for one thing in sentences of different lengths, or
who fix the answer by hand instead of explaining, support one rule together."""

from __future__ import annotations

from typing import Any

from processors.embedding import HashingEmbedder, cosine_matrix
from processors.synthesis.diff import describe_edit
from processors.synthesis.offline import cluster, join_by_anchor
from processors.synthesis.text import to_imperative
from tests.unit.synthesis.helpers import T0, edit, explanation, synthesizer, trigger

ANSIBLE = [
    ("amy", "use Ansible instead of running the commands by hand"),
    ("bo", "give me an Ansible playbook, not shell steps"),
    ("cy", "we never run commands by hand, write Ansible"),
    ("di", "that's wrong, you should have given Ansible code"),
]


def rules(result: Any) -> list[str]:
    return [i["text"] for i in result["items"] if i["kind"] == "rule"]


def test_short_and_long_paraphrases_of_one_preference_make_one_team_rule() -> None:
    items = [explanation(user, text) for user, text in ANSIBLE]
    result = synthesizer().synthesize(trigger("team:ops", items), [], T0)
    [rule] = [i for i in result["items"] if i["kind"] == "rule"]
    assert "Ansible" in rule["text"]
    assert rule["provenance"]["distinct_users"] == 4


def test_only_clusters_short_of_support_are_joined_and_only_on_a_shared_subject() -> None:
    texts = [to_imperative(t) for _, t in ANSIBLE] + ["Suggest vegan restaurants."]
    sims = cosine_matrix(HashingEmbedder().embed(texts))
    first = cluster(sims, texts, 0.35)
    assert len(first) == 3  # two Ansible clusters of two, and the unrelated one
    joined = join_by_anchor(first, sims, texts, 0.35, lambda members: len(members) < 3)
    assert sorted(map(sorted, joined)) == [[0, 1, 2, 3], [4]]
    # clusters that already have support stay as they are
    assert join_by_anchor(first, sims, texts, 0.35, lambda members: False) == first


def test_an_edit_supports_the_rule_its_author_did_not_explain() -> None:
    items = [
        explanation("amy", "always add a packing list to the itinerary"),
        explanation("bo", "you forgot the packing list again"),
        edit(
            "cy",
            "Day 1: museum; Day 2: beach.",
            "Day 1: museum; Day 2: beach. Packing list: sunscreen, hat.",
        ),
    ]
    result = synthesizer().synthesize(trigger("team:trips", items), [], T0)
    [rule] = [i for i in result["items"] if i["kind"] == "rule"]
    assert "packing list" in rule["text"].lower()
    assert rule["provenance"]["distinct_users"] == 3
    # the edit's diff is never a clustered rule's wording; alone, in its author's own group,
    # the phrase it inserted is a rule of its own (see test_insertions.py)
    alone = synthesizer().synthesize(trigger("user:cy", items[2:]), [], T0)
    assert rules(alone) == ["Include Packing list: sunscreen, hat."]


def test_a_rewording_repeated_in_several_tokens_is_one_substitution() -> None:
    diff = describe_edit(
        "Import it with `from shop.v3 import Cart` (the v3 SDK).",
        "Import it with `from shop.v4 import Cart` (the v4 SDK).",
    )
    assert diff.substitution == ("v3", "v4")
    different = describe_edit("Use the v3 SDK and retry twice.", "Use the v4 SDK and retry once.")
    assert different.substitution is None
