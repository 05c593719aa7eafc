"""The offline embedder: deterministic, unit length, and paraphrases closer than unrelated text."""

from __future__ import annotations

import math

import pytest

from processors.embedding import HashingEmbedder, _slot, content_tokens, cosine, stem


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


def _dense_reference(embedder: HashingEmbedder, text: str) -> list[float]:
    """How vectors were computed before the sparse loop: every slot, in slot order."""
    vector = [0.0] * embedder.dim
    for feature, weight in sorted(embedder.features(text).items()):
        index, sign = _slot(feature, embedder.dim)
        vector[index] += sign * weight
    norm = math.sqrt(sum(x * x for x in vector))
    return vector if norm == 0.0 else [x / norm for x in vector]


@pytest.mark.parametrize("dim", [16, 384])
def test_sparse_vectors_are_bit_identical_to_the_dense_computation(dim: int) -> None:
    """Stored vectors and query vectors must not move by an ulp with the faster loop
    (16 dims: many features share a slot, so sums and cancellations are exercised)."""
    texts = [
        "Use the v2 API, v1 is deprecated",
        "how about billing API, case 1234?",
        "answer in German, not English; keep it short and formal",
        "the of and",
        "Prefer rotate keys #17 for user:u42 " * 3,
        "",
    ]
    embedder = HashingEmbedder(dim=dim)
    for text, vector in zip(texts, embedder.embed(texts), strict=True):
        assert [x.hex() for x in vector] == [x.hex() for x in _dense_reference(embedder, text)]
