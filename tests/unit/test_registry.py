"""The schema registry client against a real (tiny, loopback) registry: credentials in
its URL never reach an error or a dead letter, and an outage costs one timeout, not
one per event."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from learnloop.codec import make_codec
from learnloop.errors import ConfigError
from learnloop.settings import load_settings
from schemas import DecodeError, EventCodec
from schemas.codec import schema_json
from schemas.registry import RegistryError, SchemaRegistryClient, confluent_header

USER, PASSWORD = "svc-learnloop", "Sup3rS3cret"
SCHEMA_ID = 7
#: a Confluent-framed message whose body does not matter: the lookup fails first
FRAMED = confluent_header(SCHEMA_ID) + b"\x02"


class Registry:
    """A loopback schema registry that serves ``SCHEMA_ID`` with ``status``, or hangs.

    ``status`` 200 answers the current Event schema, 404 the registry's "not found";
    any other status is an error answer. ``requests`` records (path, Authorization).
    """

    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.released = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.requests.append((self.path, self.headers.get("Authorization")))
                if registry.hang:
                    registry.released.wait(10)
                    return
                if registry.status == 200 and self.path == f"/schemas/ids/{SCHEMA_ID}":
                    status, body = 200, {"schema": schema_json()}
                elif registry.status in (200, 404):
                    status, body = 404, {"error_code": 40403, "message": "Schema not found"}
                else:
                    status, body = registry.status, {"error_code": 50001, "message": "down"}
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, suffix: str = "") -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}{suffix}"


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = Registry()
    server.thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.server.shutdown()
        server.server.server_close()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_no_credentials(text: str) -> None:
    assert PASSWORD not in text and USER not in text, text
    assert "token=" not in text, text


def test_credentials_in_the_url_are_sent_but_never_shown(registry: Registry) -> None:
    client = SchemaRegistryClient(registry.url("/?token=abc"), timeout_s=2)
    assert json.loads(client.get_schema(SCHEMA_ID))["name"] == "learnloop.Event"
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert registry.requests == [(f"/schemas/ids/{SCHEMA_ID}", expected)]
    _assert_no_credentials(client.url)
    assert client.url == f"http://127.0.0.1:{registry.port}"


@pytest.mark.parametrize("status", [503, 401])
def test_an_error_answer_names_the_registry_without_credentials(
    registry: Registry, status: int
) -> None:
    registry.status = status
    codec = EventCodec(registry=SchemaRegistryClient(registry.url("?token=abc"), timeout_s=2))
    with pytest.raises(DecodeError) as caught:
        codec.decode(FRAMED)
    assert caught.value.reason == "registry_unavailable"
    assert f"http://127.0.0.1:{registry.port} answered {status}" in caught.value.detail
    _assert_no_credentials(caught.value.detail)
    _assert_no_credentials(str(caught.value))


def test_an_unreachable_registry_is_named_without_credentials() -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{_closed_port()}/?token=abc"
    with pytest.raises(DecodeError) as caught:
        EventCodec(registry=SchemaRegistryClient(url, timeout_s=2)).decode(FRAMED)
    assert caught.value.reason == "registry_unavailable"
    _assert_no_credentials(caught.value.detail)
    assert "127.0.0.1:" in caught.value.detail  # still says which registry


def test_a_failed_lookup_fails_fast_until_the_retry_interval_has_passed(
    registry: Registry,
) -> None:
    clock = Clock()
    client = SchemaRegistryClient(registry.url(), timeout_s=2, retry_after_s=10, clock=clock)
    registry.status = 503
    with pytest.raises(RegistryError):
        client.get_schema(SCHEMA_ID)
    assert len(registry.requests) == 1
    registry.status = 200  # back, but the client does not ask again yet
    clock.now += 9
    with pytest.raises(RegistryError) as caught:
        client.get_schema(SCHEMA_ID)
    assert caught.value.status == 503 and not caught.value.not_found
    with pytest.raises(RegistryError):  # an unreachable registry is down for every id
        client.get_schema(SCHEMA_ID + 1)
    assert len(registry.requests) == 1
    clock.now += 1
    assert json.loads(client.get_schema(SCHEMA_ID))["name"] == "learnloop.Event"
    assert len(registry.requests) == 2


def test_an_unknown_id_is_remembered_briefly_without_blocking_other_ids(
    registry: Registry,
) -> None:
    clock = Clock()
    client = SchemaRegistryClient(registry.url(), timeout_s=2, retry_after_s=10, clock=clock)
    for _ in range(3):
        with pytest.raises(RegistryError) as caught:
            client.get_schema(SCHEMA_ID + 1)
        assert caught.value.not_found
    assert len(registry.requests) == 1
    assert client.get_schema(SCHEMA_ID)  # a 404 says nothing about other ids
    clock.now += 10
    with pytest.raises(RegistryError):
        client.get_schema(SCHEMA_ID + 1)
    assert len(registry.requests) == 3


def test_a_hanging_registry_blocks_one_event_for_the_timeout_and_no_more(
    registry: Registry,
) -> None:
    registry.hang = True
    codec = EventCodec(registry=SchemaRegistryClient(registry.url(), timeout_s=0.3))
    blocked = []
    for _ in range(3):
        start = time.perf_counter()
        with pytest.raises(DecodeError) as caught:
            codec.decode(FRAMED)
        blocked.append(time.perf_counter() - start)
        assert caught.value.reason == "registry_unavailable"
        _assert_no_credentials(caught.value.detail)
    assert 0.25 < blocked[0] < 2, blocked
    assert max(blocked[1:]) < 0.05, blocked
    assert len(registry.requests) == 1


def test_registry_settings_keep_the_url_secret_and_the_timeout_short(
    registry: Registry,
) -> None:
    settings = load_settings(schema_registry_url=registry.url())
    _assert_no_credentials(repr(settings))
    _assert_no_credentials(str(settings.model_dump()))
    codec = make_codec(settings)
    assert codec.registry is not None
    assert codec.registry.url == f"http://127.0.0.1:{registry.port}"
    assert json.loads(codec.registry.get_schema(SCHEMA_ID))["name"] == "learnloop.Event"
    assert settings.schema_registry_timeout_s <= 5
    with pytest.raises(ConfigError, match="schema_registry_timeout_s"):
        load_settings(schema_registry_timeout_s=60)
    with pytest.raises(ConfigError, match="schema_registry_url") as caught:
        load_settings(schema_registry_url=f"{USER}:{PASSWORD}@registry:8081")
    _assert_no_credentials(str(caught.value))
