"""The embedder the settings name, and a way to call a slow one off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from processors.embedding import Embedder, HashingEmbedder

if TYPE_CHECKING:
    from learnloop.settings import EmbedderSettings

T = TypeVar("T")


def make_embedder(config: EmbedderSettings) -> Embedder:
    """``hashing`` (default, offline), ``sentence-transformers`` or ``openai``."""
    if config.kind == "sentence-transformers":
        from learnloop.embeddings.dense import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(config.model, batch_size=config.batch_size)
    if config.kind == "openai":
        from learnloop.embeddings.remote import OpenAIEmbedder

        assert config.base_url is not None  # validated by the settings
        assert config.model is not None
        return OpenAIEmbedder(
            config.base_url,
            config.model,
            config.api_key,
            dim=config.dim,
            dimensions=config.dimensions,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            batch_size=config.batch_size,
        )
    return HashingEmbedder(config.dim or 384)


def is_blocking(embedder: object) -> bool:
    """True for embedders that do I/O or heavy compute (dense models, remote endpoints)."""
    return bool(getattr(embedder, "blocking", False))


async def embed_off_loop(embedder: object, work: Callable[[], T], timeout_s: float) -> T:
    """Run ``work`` (which embeds) in a thread when the embedder is slow, with a deadline.

    The hashing embedder is pure CPU and quick: it runs inline as before.
    """
    if not is_blocking(embedder):
        return work()
    return await asyncio.wait_for(asyncio.to_thread(work), timeout_s)
