"""The offline embedder: deterministic, unit length, and paraphrases closer than unrelated text."""

from __future__ import annotations

import math

import pytest

from processors.embedding import HashingEmbedder, content_tokens, cosine, stem


def test_vectors_are_deterministic_unit_length_and_sized() -> None:
    texts = ["Use the v2 API, v1 is deprecated", "answer in German"]
    first = HashingEmbedder(dim=256).embed(texts)
    second = HashingEmbedder(dim=256).embed(texts)  # a new instance: no shared state needed
    assert first == second
    for vector in first:
        assert len(vector) == 256
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-9)


def test_text_without_content_words_embeds_to_zero_and_compares_as_zero() -> None:
    empty, other = HashingEmbedder().embed(["the of and", "use tabs"])
    assert not any(empty)
    assert cosine(empty, other) == 0.0


@pytest.mark.parametrize(
    ("a", "b", "unrelated"),
    [
        (
            "use the v2 API, v1 is deprecated",
            "please use the v2 api instead of v1",
            "answer in German",
        ),
        ("answer in German", "respond in Deutsch please", "use the v2 API"),
        ("keep your answers short", "be more concise, answers are too long", "cite the docs"),
        ("stop using emojis", "no emojis in responses", "the deploy tool needs a region"),
    ],
)
def test_paraphrases_score_above_unrelated_feedback(a: str, b: str, unrelated: str) -> None:
    va, vb, vu = HashingEmbedder().embed([a, b, unrelated])
    assert cosine(va, vb) > cosine(va, vu) + 0.2


def test_light_stemming_joins_word_forms() -> None:
    assert stem("using") == stem("used") == stem("uses") == stem("use")
    assert stem("deprecated") == stem("deprecation")
    assert content_tokens("The answers") == content_tokens("answer")


def test_dimension_must_be_useful() -> None:
    with pytest.raises(ValueError, match="dim"):
        HashingEmbedder(dim=4)
