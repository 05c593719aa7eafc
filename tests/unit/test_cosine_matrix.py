"""The fast pairwise cosine gives exactly the floats of the plain definition."""

from __future__ import annotations

import math
import random

import pytest

from processors.embedding import HashingEmbedder, cosine, cosine_matrix


def _reference(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return 0.0 if na == 0.0 or nb == 0.0 else dot / (na * nb)


def test_matrix_is_bit_identical_to_pairwise_cosine_on_hashed_texts() -> None:
    texts = [
        "use the v2 endpoint, v1 is deprecated",
        "please prefer the v2 API",
        "call rotate_key with the old key id",
        "",  # no content words: the zero vector
        "the billing service needs the v2 endpoint",
    ]
    vectors = HashingEmbedder().embed(texts)
    expected = [[_reference(u, v) for v in vectors] for u in vectors]
    assert cosine_matrix(vectors) == expected
    assert [[cosine(u, v) for v in vectors] for u in vectors] == expected


@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_matrix_is_bit_identical_on_random_vectors(density: float) -> None:
    rng = random.Random(3)
    vectors = [
        [rng.gauss(0, 1) if rng.random() < density else 0.0 for _ in range(64)] for _ in range(12)
    ]
    vectors.append([0.0] * 64)
    expected = [[_reference(u, v) for v in vectors] for u in vectors]
    assert cosine_matrix(vectors) == expected


def test_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        cosine_matrix([[1.0, 0.0], [1.0]])
    with pytest.raises(ValueError, match="different lengths"):
        cosine([1.0, 0.0], [1.0])
