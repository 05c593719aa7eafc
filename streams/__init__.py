"""The Faust wiring: topics, tables and thin agents that call ``processors/``."""

from streams.app import WorkerApp, create_app

__all__ = ["WorkerApp", "create_app"]
