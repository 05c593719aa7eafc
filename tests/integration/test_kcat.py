"""Interoperability with a Kafka client no one here wrote: Debian's ``kcat`` (librdkafka).

kcat produces JSON lines and Avro single-object files (written with the codec)
that the worker must accept and count, and garbage that must land in the
dead-letter topic, whose headers kcat then reads back. kcat must be on PATH:
``scripts/test.sh`` installs it, so a missing kcat fails these tests.

kcat is run with ``partitioner=murmur2_random``, the Java client's (and
aiokafka's) partitioner, which learnloop's co-partitioning of feedback with its
interaction assumes; librdkafka's own default (CRC32) would place keys elsewhere.

librdkafka before 2.2.0 (Debian 12 ships 2.0.2) skips one byte too few per
tagged field (fixed by librdkafka PR #4278), and the embedded Tansu broker sends
tagged fields in its ApiVersions v3 answer, so that kcat cannot even connect
("ApiVersionRequest failed: Local: Read underflow"). When kcat's own librdkafka
is that old, it is run against the newer librdkafka that the ``confluent-kafka``
wheel bundles (same kcat binary, ``LD_LIBRARY_PATH``); without one the tests fail.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from learnloop.embedded.broker import EmbeddedBroker
from schemas import WireFormat
from tests.conftest import WorkerProcess, wait_until
from tests.integration.streams_helpers import expected_counts
from tests.integration.test_ingest_kafka import (
    encode,
    key_of,
    module_env,
    read_dead_letters,
    start_module_worker,
    valid_events,
    wait_counts,
)

pytestmark = pytest.mark.integration


FIXED_LIBRDKAFKA = (2, 2, 0)


def kcat_binary() -> str:
    found = shutil.which("kcat")
    if found is None:
        pytest.fail("kcat is not on PATH: scripts/test.sh installs it (apt-get install kcat)")
    return found


def librdkafka_version(environ: dict[str, str] | None = None) -> tuple[int, ...]:
    """The librdkafka version kcat runs with (``kcat -V``)."""
    out = subprocess.run(
        [kcat_binary(), "-V"], capture_output=True, timeout=10, check=False, env=environ
    ).stdout.decode()
    match = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out)
    assert match, f"kcat -V does not name its librdkafka: {out!r}"
    return tuple(int(part) for part in match.groups())


@functools.cache
def kcat_environ() -> dict[str, str]:
    """The environment to run kcat in: with a librdkafka that can talk to Tansu."""
    if librdkafka_version() >= FIXED_LIBRDKAFKA:
        return dict(os.environ)
    spec = importlib.util.find_spec("confluent_kafka")
    bundled = (
        sorted((Path(spec.origin).parent.parent / "confluent_kafka.libs").glob("librdkafka*.so*"))
        if spec is not None and spec.origin
        else []
    )
    if not bundled:
        pytest.fail(
            f"kcat's librdkafka {librdkafka_version()} cannot connect to the embedded broker "
            "(librdkafka < 2.2.0 misreads tagged fields) and no newer librdkafka was found: "
            "install the test extra (confluent-kafka bundles one)"
        )
    libdir = Path(tempfile.mkdtemp(prefix="kcat-librdkafka-"))
    atexit.register(shutil.rmtree, libdir, True)
    (libdir / "librdkafka.so.1").symlink_to(bundled[-1])
    environ = {**os.environ, "LD_LIBRARY_PATH": str(libdir)}
    assert librdkafka_version(environ) >= FIXED_LIBRDKAFKA
    return environ


def kcat(env: dict[str, str], *args: str, stdin: bytes | None = None) -> bytes:
    """Run kcat against the test's broker; fail with its stderr if it fails."""
    command = [kcat_binary(), "-b", env["LEARNLOOP_KAFKA_BOOTSTRAP"], *args]
    result = subprocess.run(
        command, input=stdin, capture_output=True, timeout=60, check=False, env=kcat_environ()
    )
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr.decode()[-2000:]}"
    return result.stdout


def produce_args(env: dict[str, str]) -> list[str]:
    return ["-P", "-t", env["LEARNLOOP_TOPICS__EVENTS"], "-X", "partitioner=murmur2_random"]


@pytest.fixture(scope="module")
def env(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    kcat_environ()  # fail before paying for a worker
    return module_env(broker, tmp_path_factory.mktemp("kcat"))


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[WorkerProcess]:
    process = start_module_worker(env, Path(env["LEARNLOOP_DATA_DIR"]) / "worker.log")
    yield process
    process.stop()


def test_kcat_is_a_real_kafka_client(env: dict[str, str], worker: WorkerProcess) -> None:
    """kcat (librdkafka) talks to the embedded broker: metadata lists our events topic."""
    metadata = json.loads(kcat(env, "-L", "-J"))
    assert env["LEARNLOOP_TOPICS__EVENTS"] in {t["topic"] for t in metadata["topics"]}


def test_kcat_json_lines_are_accepted(env: dict[str, str], worker: WorkerProcess) -> None:
    events = valid_events("kcat-json", 5)
    # one message per line, "key:value" split at the first colon (-K:)
    lines = b"".join(key_of(e) + b":" + orjson.dumps(e) + b"\n" for e in events)
    assert b"\n" not in b"".join(orjson.dumps(e) for e in events)
    kcat(env, *produce_args(env), "-K:", stdin=lines)
    wait_counts(env, expected_counts(events), 60)


def test_kcat_avro_single_object_files_are_accepted(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    events = valid_events("kcat-avro", 5)
    by_key: dict[bytes, list[Path]] = {}
    for index, event in enumerate(events):
        path = tmp_path / f"{index:03d}.avro"  # each file is one message
        path.write_bytes(encode(event, WireFormat.AVRO))
        by_key.setdefault(key_of(event), []).append(path)
    for key, paths in by_key.items():  # in order: the interaction before its feedback
        kcat(env, *produce_args(env), "-k", key.decode(), *map(str, paths))
    wait_counts(env, expected_counts(events), 60)


def test_kcat_garbage_lands_in_the_dead_letter_topic(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    avro = encode(valid_events("kcat-bad", 1)[1], WireFormat.AVRO)
    garbage: dict[str, tuple[bytes, str]] = {
        "kcat-garbage-random": (bytes(range(0x80, 0x100)), "unknown_encoding"),
        "kcat-garbage-text": (b"hello from kcat, not an event", "unknown_encoding"),
        "kcat-garbage-truncated-avro": (avro[: len(avro) - 3], "corrupt_avro"),
        "kcat-garbage-json": (b'{"event_id": "k1", "type": "nope"}', "invalid_event"),
    }
    for key, (value, _) in garbage.items():
        path = tmp_path / key
        path.write_bytes(value)
        kcat(env, *produce_args(env), "-k", key, str(path))

    def ours() -> dict[bytes, Any] | None:
        found = {d.key: d for d in read_dead_letters(env) if d.key and d.key.startswith(b"kcat-")}
        return found if len(found) >= len(garbage) else None

    letters = wait_until(ours, 60)
    assert sorted(k.decode() for k in letters) == sorted(garbage)
    for key, (value, reason) in garbage.items():
        letter = letters[key.encode()]
        assert letter.reason == reason, (key, letter.headers)
        assert letter.value == value
        assert letter.source.startswith(env["LEARNLOOP_TOPICS__EVENTS"] + "/")

    # and kcat, as a consumer, reads the dead letters' headers back
    out = kcat(
        env,
        "-C",
        "-t",
        env["LEARNLOOP_TOPICS__DEAD_LETTERS"],
        "-o",
        "beginning",
        "-e",
        "-J",
    )
    seen: dict[str, dict[str, str]] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:  # a binary payload kcat could not print as JSON
            continue
        flat = message.get("headers") or []
        if message.get("key") in garbage:
            seen[message["key"]] = dict(zip(flat[::2], flat[1::2], strict=True))
    assert seen, out[-1000:]
    for key, headers in seen.items():
        assert headers["learnloop.reason"] == garbage[key][1]
        assert headers["learnloop.source"].startswith(env["LEARNLOOP_TOPICS__EVENTS"] + "/")
        assert int(headers["learnloop.dead_lettered_ms"]) > 0
