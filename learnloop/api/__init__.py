"""The HTTP serving layer: ingestion, group views, health and metrics."""

from learnloop.api.app import create_api

__all__ = ["create_api"]
