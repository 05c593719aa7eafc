"""Where the API keeps the compressed records of memory versions: a file, not the heap.

Why: every API replica reads the whole versions topic and keeps every version for
the history endpoints (older versions, diffs, rollback). Compressed, a version of 30
items still takes 1.7-7.5 KiB, and the count only grows (a decay alone adds one per
fading group every few days), so the heap of a long-lived replica grew without
bound. Appended to a file instead, a version costs the heap one ``(offset, length)``
pair; reading an old one back is one ``pread`` (from the page cache when recently
read or written) before the decompression it needed anyway.

The file, ``versions-<pid>.bin`` in the given directory, is rebuilt from the log on
every start, like everything else the API holds, and deleted when the API stops.
It keeps its name while open so that whatever meters the directory sees it
(Kubernetes counts an ``emptyDir``'s files against its ``sizeLimit``, but not a
deleted file still open); one left by a process that died is deleted by the next
start in the same directory (a restarted container, same pid: truncated). If the
file cannot be written (no space left, a read-only directory), records stay in
memory, as before, and the failure is logged once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from learnloop import metrics

log = structlog.get_logger(__name__)

#: a stored record: the bytes themselves (kept in memory), or ``(offset, length)`` in the file
Ref = bytes | tuple[int, int]
PREFIX, SUFFIX = "versions-", ".bin"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def _remove_orphans(directory: Path) -> None:
    """Delete the files of processes that died without deleting theirs."""
    for path in directory.glob(f"{PREFIX}*{SUFFIX}"):
        pid = path.name[len(PREFIX) : -len(SUFFIX)]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()


class VersionArchive:
    """Append-only storage of compressed version records, in ``directory`` if given."""

    def __init__(self, directory: Path | None) -> None:
        self._fd: int | None = None
        self._path: Path | None = None
        self._writable = False
        self._end = 0
        self._in_memory = 0
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                _remove_orphans(directory)
                path = directory / f"{PREFIX}{os.getpid()}{SUFFIX}"
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                self._path = path
                self._writable = True
            except OSError as exc:
                self._stop_writing(exc)

    @property
    def on_disk(self) -> bool:
        """True while new records go to the file."""
        return self._writable

    def put(self, record: bytes) -> Ref:
        """Store ``record``; what :meth:`get` needs to read it back."""
        if self._fd is not None and self._writable:
            try:
                written = os.pwrite(self._fd, record, self._end)
                if written != len(record):
                    raise OSError(f"short write: {written} of {len(record)} bytes")
            except OSError as exc:
                self._stop_writing(exc)
            else:
                ref = (self._end, len(record))
                self._end += len(record)
                metrics.API_HISTORY_BYTES.labels("disk").set(self._end)
                return ref
        self._in_memory += len(record)
        metrics.API_HISTORY_BYTES.labels("memory").set(self._in_memory)
        return record

    def get(self, ref: Ref) -> bytes:
        """The record stored as ``ref``."""
        if isinstance(ref, bytes):
            return ref
        offset, length = ref
        if self._fd is None:
            raise RuntimeError("a record in the file was read after the archive was closed")
        return os.pread(self._fd, length, offset)

    def forget(self, ref: Ref) -> None:
        """A record replaced by a newer copy (its version was read from the log again).

        Its heap bytes are released; a record in the file keeps its bytes there until
        the file is deleted (a duplicate costs a few KiB of disk until the next start).
        """
        if isinstance(ref, bytes):
            self._in_memory -= len(ref)
            metrics.API_HISTORY_BYTES.labels("memory").set(self._in_memory)

    def close(self) -> None:
        """Close and delete the file: nothing in it outlives the process that wrote it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._path = None
        self._writable = False

    def _stop_writing(self, exc: OSError) -> None:
        """Keep new records in memory: the API still works, with more heap.

        Records already in the file stay readable through their refs.
        """
        self._writable = False
        log.warning(
            "memory history now kept in memory: its file cannot be written",
            error=f"{type(exc).__name__}: {exc}",
        )
