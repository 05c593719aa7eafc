"""Where the API keeps the compressed records of memory versions: a file, not the heap.

Why: every API replica reads the whole versions topic and keeps every version for
the history endpoints (older versions, diffs, rollback). Compressed, a version of 30
items still takes 1.7-7.5 KiB, and the count only grows (a decay alone adds one per
fading group every few days), so the heap of a long-lived replica grew without
bound. Appended to an anonymous file instead, a version costs the heap one
``(offset, length)`` pair; reading an old one back is one ``pread`` (from the page
cache when recently read or written) before the decompression it needed anyway.

The file is created unlinked (``tempfile.TemporaryFile``): it is rebuilt from the
log on every start, like everything else the API holds, and vanishes with the
process, even after a crash. If it cannot be written (no space left, a read-only
directory), records stay in memory, as before, and the failure is logged once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

import structlog

from learnloop import metrics

log = structlog.get_logger(__name__)

#: a stored record: the bytes themselves (kept in memory), or ``(offset, length)`` in the file
Ref = bytes | tuple[int, int]


class VersionArchive:
    """Append-only storage of compressed version records, in ``directory`` if given."""

    def __init__(self, directory: Path | None) -> None:
        self._file: IO[bytes] | None = None
        self._writable = False
        self._end = 0
        self._in_memory = 0
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                # lives as long as the archive: close() closes it
                self._file = tempfile.TemporaryFile(  # noqa: SIM115
                    dir=directory, prefix="learnloop-versions-"
                )
                self._writable = True
            except OSError as exc:
                self._stop_writing(exc)

    @property
    def on_disk(self) -> bool:
        """True while new records go to the file."""
        return self._writable

    def put(self, record: bytes) -> Ref:
        """Store ``record``; what :meth:`get` needs to read it back."""
        if self._file is not None and self._writable:
            try:
                written = os.pwrite(self._file.fileno(), record, self._end)
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
        if self._file is None:
            raise RuntimeError("a record in the file was read after the archive was closed")
        return os.pread(self._file.fileno(), length, offset)

    def forget(self, ref: Ref) -> None:
        """A record that will not be read again (its version was read from the log again)."""
        if isinstance(ref, bytes):
            self._in_memory -= len(ref)
            metrics.API_HISTORY_BYTES.labels("memory").set(self._in_memory)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
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
