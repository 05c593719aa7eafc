"""Vector store for published memory: one port, an in-process and a server adapter.

Import the port types from here; the adapters live in :mod:`learnloop.store.edge`
and :mod:`learnloop.store.qdrant_server` and are usually chosen by
:func:`open_store`, so importing this package loads neither engine.
"""

from __future__ import annotations

from learnloop.store.factory import open_store
from learnloop.store.port import Hit, Point, StoreError, VectorStore, Where, WhereValue

__all__ = ["Hit", "Point", "StoreError", "VectorStore", "Where", "WhereValue", "open_store"]
