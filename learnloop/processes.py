"""Starting the production processes: the worker and the API server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import uvicorn

from learnloop.api.app import Services, create_api
from learnloop.api.group_view import GroupView, changelog_topic
from learnloop.api.memory_log import MemoryLog
from learnloop.codec import make_codec
from learnloop.embedded.broker import _die_with_parent
from learnloop.embeddings import make_embedder
from learnloop.errors import LearnloopError
from learnloop.producer import EventProducer
from learnloop.settings import Settings
from learnloop.store.factory import open_store
from learnloop.topics import ensure_topics


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts.

    `learnloop up` binds it first and hands it to uvicorn once the broker and the
    worker are ready: the port is taken for the whole start-up, so the broker or the
    worker, which pick free ports of their own meanwhile, cannot land on it, and a
    port already in use fails at once instead of after the start-up.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise LearnloopError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def build_api_server(settings: Settings, bootstrap: str) -> uvicorn.Server:
    """The API app with its services, wrapped in a uvicorn server (not yet running)."""
    store = open_store(
        settings.qdrant_url,
        settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        settings.data_dir,
        settings.external_timeout_s,
    )
    services = Services(
        producer=EventProducer(bootstrap, settings.topics.events, codec=make_codec(settings)),
        groups=GroupView(
            bootstrap, changelog_topic(settings.app_id, "group-state"), settings.partitions
        ),
        memory=MemoryLog(
            bootstrap,
            settings.topics.versions,
            settings.topics.results,
            settings.partitions,
            store,
            make_embedder(settings.embedder),
            history_dir=settings.data_dir / "api",
        ),
        bootstrap=bootstrap,
    )
    app = create_api(settings, services)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    return uvicorn.Server(config)


async def rebuild_index(
    settings: Settings, bootstrap: str, timeout_s: float = 300.0
) -> dict[str, int]:
    """Rebuild the vector index from the versions log (the source of truth)."""
    store = open_store(
        settings.qdrant_url,
        settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        settings.data_dir,
        settings.external_timeout_s,
    )
    memory = MemoryLog(
        bootstrap,
        settings.topics.versions,
        settings.topics.results,
        settings.partitions,
        store,
        make_embedder(settings.embedder),
    )
    await memory.start()
    try:
        await asyncio.wait_for(memory.caught_up.wait(), timeout_s)
        result = await memory.reconcile()
        return {"groups": len(memory.groups()), **result}
    finally:
        await memory.stop()
        await store.close()


def run_api(settings: Settings, bootstrap: str) -> None:
    """Block serving the API; SIGTERM drains in-flight requests, then stops."""
    asyncio.run(ensure_topics(bootstrap, settings))
    build_api_server(settings, bootstrap).run()


def spawn_worker(bootstrap: str, settings: Settings, web_port: int) -> subprocess.Popen[bytes]:
    """A ``learnloop worker`` child process that dies with this one."""
    env = dict(os.environ)
    env.update(
        LEARNLOOP_KAFKA_BOOTSTRAP=bootstrap,
        LEARNLOOP_BROKER_TRUE_END_OFFSETS="true" if settings.true_end_offsets else "false",
        LEARNLOOP_WORKER_WEB_PORT=str(web_port),
        LEARNLOOP_DATA_DIR=str(settings.data_dir),
        LEARNLOOP_LOG_FORMAT=settings.log_format,
        LEARNLOOP_PARTITIONS=str(settings.partitions),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "learnloop", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
