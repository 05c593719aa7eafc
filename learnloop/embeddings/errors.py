"""An embedding endpoint that cannot answer now: the work that needed it is retried later."""

from __future__ import annotations

from learnloop.synthesis.errors import SynthesisUnavailable


class EmbeddingUnavailable(SynthesisUnavailable):
    """Raised by a remote embedder after its retries; a synthesis trigger is deferred."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, reason="embeddings_unavailable", retry_after_s=retry_after_s)
