"""Pick the vector store for this process from settings.

A configured Qdrant URL means a shared server (production, several workers);
without one, learnloop runs Qdrant's engine in-process so ``learnloop up`` needs
nothing else. Adapters are imported lazily so the edge wheel's native library
is not loaded by processes that talk to a server, and vice versa.
"""

from __future__ import annotations

from pathlib import Path

from learnloop.store.port import VectorStore

__all__ = ["EDGE_SUBDIR", "open_store"]

EDGE_SUBDIR = "vectors"
"""Edge collections live in ``data_dir / EDGE_SUBDIR``: edge treats every directory
under its root as a collection, so it must not share ``data_dir`` with the broker."""


def open_store(
    qdrant_url: str | None,
    qdrant_api_key: str | None,
    data_dir: Path | None,
    timeout_s: float,
) -> VectorStore:
    """Server adapter when a URL is given, else edge under ``data_dir`` (temporary if None)."""
    if qdrant_url:
        from learnloop.store.qdrant_server import QdrantServerStore

        return QdrantServerStore(qdrant_url, qdrant_api_key, timeout_s)
    from learnloop.store.edge import EdgeVectorStore

    return EdgeVectorStore(data_dir / EDGE_SUBDIR if data_dir is not None else None)
