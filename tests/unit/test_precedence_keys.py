"""The context's conflict keys never hide a contradiction, so precedence stays exact.

``assemble_prefix`` only asks ``contradiction`` about pairs whose keys meet; this
checks, over every ordered pair of a corpus of rules in the shapes feedback takes,
that each contradiction is among the pairs asked, and that the prefix comes out
the same with and without the keys.
"""

from __future__ import annotations

import itertools
import random

from learnloop.api.context_route import _conflict_keys, _conflicts
from processors.context import assemble_prefix
from processors.synthesis.text import contradiction
from tests.unit.test_memory_ops import item, snap

SUBJECTS = ["the v1 API", "the v2 API", "tabs", "spaces", "npm", "pnpm", "emojis",
            "bullet points", "the billing client", "metric units", "imperial units"]
LANGUAGES = ["English", "German", "French", "Spanish"]
TEMPLATES = [
    "Use {a}.", "Don't use {a}.", "Never use {a}.", "Prefer {a} over {b}.", "Use {a}, not {b}.",
    "Use {a} instead of {b}.", "Avoid {a}.", "Always mention {a}.", "{a} is too long.",
    "Write shorter answers about {a}.", "Answer in {lang}.", "Always answer in {lang}.",
    "Reply in {lang} when asked about {a}.", "Use {a} for billing.", "Stop suggesting {a}.",
]


def corpus(n: int = 260, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    texts = {
        template.format(a=rng.choice(SUBJECTS), b=rng.choice(SUBJECTS), lang=rng.choice(LANGUAGES))
        for template in TEMPLATES
        for _ in range(n // len(TEMPLATES))
    }
    return sorted(texts)


def keys_meet(narrow: str, wide: str) -> bool:
    offers = _conflict_keys(item("user:a", narrow))[0]
    seeks = _conflict_keys(item("team:a", wide))[1]
    return bool(set(offers) & set(seeks))


def test_every_contradiction_shares_a_key() -> None:
    texts = corpus()
    found = 0
    for narrow, wide in itertools.permutations(texts, 2):
        if contradiction(narrow, wide) is not None:
            found += 1
            assert keys_meet(narrow, wide), (narrow, wide)
    assert found > 100  # the corpus does exercise every kind of contradiction


def test_the_keys_skip_most_pairs() -> None:
    texts = corpus()
    pairs = list(itertools.permutations(texts, 2))
    asked = sum(keys_meet(narrow, wide) for narrow, wide in pairs)
    assert asked < len(pairs) / 3


def test_the_prefix_is_the_same_with_and_without_keys() -> None:
    rng = random.Random(5)
    texts = corpus()
    for _ in range(20):
        snapshots = {
            group: snap(*(item(group, t) for t in rng.sample(texts, 12)), group=group)
            for group in ("user:a", "team:a", "org:a", "global")
        }
        for budget in (60, 400, 4000):
            plain = assemble_prefix(snapshots, budget, _conflicts)
            keyed = assemble_prefix(snapshots, budget, _conflicts, _conflict_keys)
            assert keyed == plain
