"""open_store picks the adapter from settings; no network is touched here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from learnloop.store import open_store
from learnloop.store import qdrant_server as qdrant_server_module
from learnloop.store.edge import EdgeVectorStore
from learnloop.store.factory import EDGE_SUBDIR
from learnloop.store.qdrant_server import QdrantServerStore


class _RecordingClient:
    """Stands in for AsyncQdrantClient, whose constructor starts a version-check thread."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    async def close(self) -> None:
        pass


async def test_url_selects_the_server_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qdrant_server_module, "AsyncQdrantClient", _RecordingClient)

    store = open_store("https://qdrant.example:6333", "secret", Path("unused"), 2.5)

    assert isinstance(store, QdrantServerStore)
    client = store._client
    assert isinstance(client, _RecordingClient)
    # The client wants whole seconds; it gets at least the configured timeout.
    assert client.kwargs == {
        "url": "https://qdrant.example:6333",
        "api_key": "secret",
        "timeout": 3,
    }
    await store.close()


async def test_no_url_selects_edge_under_data_dir(tmp_path: Path) -> None:
    store = open_store(None, None, tmp_path, 5.0)
    try:
        assert isinstance(store, EdgeVectorStore)
        assert store.path == tmp_path / EDGE_SUBDIR
        await store.ensure_collection("memory", 3, ["group"])
        assert (tmp_path / EDGE_SUBDIR / "memory").is_dir()
    finally:
        await store.close()


async def test_empty_url_and_no_data_dir_selects_temporary_edge() -> None:
    store = open_store("", None, None, 5.0)
    assert isinstance(store, EdgeVectorStore)
    root = store.path
    assert root.is_dir()
    await store.close()
    assert not root.exists()


def test_server_adapter_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        QdrantServerStore("http://localhost:6333", None, 0)
