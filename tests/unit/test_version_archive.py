"""The API's file of compressed versions: records read back as written, and never lost.

Real files in pytest's temporary directory; the failures are real ones too (a
directory that cannot exist, a file size limit), not simulated.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from learnloop.api.version_archive import VersionArchive


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[VersionArchive]:
    archive = VersionArchive(tmp_path / "api")
    yield archive
    archive.close()


def test_records_go_to_the_file_and_read_back_as_written(
    archive: VersionArchive, tmp_path: Path
) -> None:
    records = [bytes([n]) * (n * 37 + 1) for n in range(50)]
    refs = [archive.put(r) for r in records]
    assert archive.on_disk
    assert all(isinstance(ref, tuple) for ref in refs)  # the heap keeps offsets only
    assert [archive.get(ref) for ref in reversed(refs)] == records[::-1]
    # named while open, so that a volume's size limit counts it
    [path] = (tmp_path / "api").iterdir()
    assert path.name == f"versions-{os.getpid()}.bin"
    assert path.stat().st_size == sum(len(r) for r in records)
    on_disk = REGISTRY.get_sample_value("learnloop_api_history_bytes", {"where": "disk"})
    assert on_disk == sum(len(r) for r in records)
    archive.close()
    assert list((tmp_path / "api").iterdir()) == []  # deleted when the API stops


def test_a_dead_process_file_is_deleted_and_a_live_one_kept(tmp_path: Path) -> None:
    directory = tmp_path / "api"
    directory.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now (reaped)
    (directory / f"versions-{dead.pid}.bin").write_bytes(b"left by a crash")
    (directory / f"versions-{os.getppid()}.bin").write_bytes(b"another live API")
    (directory / "notes.txt").write_bytes(b"not ours")
    archive = VersionArchive(directory)
    names = sorted(p.name for p in directory.iterdir())
    archive.close()
    assert names == sorted(
        [f"versions-{os.getppid()}.bin", f"versions-{os.getpid()}.bin", "notes.txt"]
    )


def test_without_a_directory_records_stay_in_memory() -> None:
    archive = VersionArchive(None)
    ref = archive.put(b"version")
    assert not archive.on_disk
    assert ref == b"version" and archive.get(ref) == b"version"
    archive.close()


def test_a_directory_that_cannot_be_made_keeps_records_in_memory_and_says_so(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with capture_logs() as logs:
        archive = VersionArchive(tmp_path / "a-file" / "api")
    assert not archive.on_disk
    assert archive.get(archive.put(b"v1")) == b"v1"
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "NotADirectoryError" in warning["error"]
    archive.close()


def test_a_write_that_fails_part_way_keeps_what_was_written_and_the_rest_in_memory(
    archive: VersionArchive,
) -> None:
    first = archive.put(b"x" * 1000)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, limits[1]))
    try:
        with capture_logs() as logs:
            second = archive.put(b"y" * 1000)  # would end past 1,500 bytes
            third = archive.put(b"z" * 10)  # no second attempt at the file
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert isinstance(first, tuple) and second == b"y" * 1000 and third == b"z" * 10
    assert not archive.on_disk
    assert archive.get(first) == b"x" * 1000  # still read from the file
    assert len([e for e in logs if e["log_level"] == "warning"]) == 1
