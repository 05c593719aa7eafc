"""The on-disk index of one export: a group's events in SQLite, keyed by interaction id.

Feedback can arrive before its interaction and an interaction can collect many
ratings, so rows can only be built once the whole topic has been read. Keeping
the events in a dict would grow with the dataset; this index keeps them in a
temporary SQLite file instead (page cache capped), and every query below is read
through a cursor, so the Python side holds one row (or one bounded bucket) at a time.

Tables: ``interactions`` (one per interaction id, first seen wins) and
``feedback`` (ratings and edits, one per event id) while loading; ``ups``,
``downs`` and ``bands`` (LSH buckets of the up-rated queries) for pairing ratings.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from learnloop.export.rows import HIGH_SCORE, LOW_SCORE

#: SQLite page cache per export (negative = KiB): bounded, and not on the Python heap
CACHE_KIB: Final = 8192

InteractionRow = tuple[str, str, int, str, str | None, str, str]
FeedbackRow = tuple[str, str, str, int, str, str | None, float | None, str | None, str | None]

_SCHEMA: Final = """
CREATE TABLE interactions (
    iid TEXT PRIMARY KEY, event_id TEXT, ts INTEGER, user_id TEXT, org TEXT,
    query TEXT, response TEXT
);
CREATE TABLE feedback (
    event_id TEXT PRIMARY KEY, iid TEXT NOT NULL, kind TEXT NOT NULL, ts INTEGER,
    user_id TEXT, org TEXT, score REAL, original TEXT, edited TEXT
);
CREATE TABLE ups (
    iid TEXT PRIMARY KEY, ts INTEGER, query TEXT, response TEXT, norm TEXT,
    uses INTEGER NOT NULL DEFAULT 0, vec BLOB
);
CREATE TABLE downs (iid TEXT PRIMARY KEY, ts INTEGER, query TEXT, response TEXT, norm TEXT);
CREATE TABLE bands (band TEXT NOT NULL, iid TEXT NOT NULL);
"""


class ExportIndex:
    """One export's events on disk; ``close()`` it (the file lives in the caller's temp dir)."""

    def __init__(self, path: Path) -> None:
        # the write phase runs in a worker thread; one thread uses the connection at a time
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            f"cache_size = -{CACHE_KIB}",
            "temp_store = FILE",
            "locking_mode = EXCLUSIVE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- loading ---------------------------------------------------------------------

    def add(self, interactions: Sequence[InteractionRow], feedback: Sequence[FeedbackRow]) -> int:
        """Insert one batch; returns how many were already there (resent events)."""
        before = self.db.total_changes
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR IGNORE INTO interactions VALUES (?, ?, ?, ?, ?, ?, ?)", interactions
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", feedback
        )
        self.db.execute("COMMIT")
        return len(interactions) + len(feedback) - (self.db.total_changes - before)

    def finish_loading(self, owner: str | None) -> int:
        """Drop events of tenants other than ``owner`` (None: keep all); index for the join.

        Returns how many events were dropped.
        """
        dropped = 0
        if owner is not None:
            self.db.execute("BEGIN")
            for table in ("interactions", "feedback"):
                cursor = self.db.execute(
                    f"DELETE FROM {table} WHERE org IS NOT NULL AND org != ?",  # noqa: S608
                    (owner,),
                )
                dropped += max(cursor.rowcount, 0)
            self.db.execute("COMMIT")
        self.db.execute("CREATE INDEX feedback_by_interaction ON feedback (iid, kind)")
        return dropped

    # --- reading ---------------------------------------------------------------------

    def edits(self) -> Iterator[tuple[str, str | None, str, str, str]]:
        """``(event_id, query, original, edited, response)``; query None: no interaction."""
        yield from self.db.execute(
            """
            SELECT f.event_id, i.query, coalesce(f.original, ''), coalesce(f.edited, ''),
                   coalesce(i.response, '')
            FROM feedback f LEFT JOIN interactions i ON i.iid = f.iid
            WHERE f.kind = 'edit'
            ORDER BY f.ts, f.event_id
            """
        )

    def rated(self) -> Iterator[tuple[str, int, int, int, int, str | None, str | None, bool]]:
        """Per rated interaction: ``(iid, n, ups, downs, first_ts, query, response, edited)``.

        ``query`` is None when the interaction is unknown; ``edited`` says whether the
        interaction also has an edit (whose result supersedes the rated response).
        """
        rows = self.db.execute(
            """
            SELECT f.iid, count(*), sum(f.score >= ?), sum(f.score < ?), min(f.ts),
                   i.query, i.response,
                   EXISTS (SELECT 1 FROM feedback e WHERE e.iid = f.iid AND e.kind = 'edit')
            FROM feedback f LEFT JOIN interactions i ON i.iid = f.iid
            WHERE f.kind = 'rating' AND f.score IS NOT NULL
            GROUP BY f.iid
            ORDER BY min(f.ts), f.iid
            """,
            (HIGH_SCORE, LOW_SCORE),
        )
        for iid, n, ups, downs, ts, query, response, edited in rows:
            yield iid, n, ups, downs, ts, query, response, bool(edited)

    # --- pairing ratings ---------------------------------------------------------------

    def add_rated(
        self,
        ups: Sequence[tuple[str, int, str, str, str]],
        downs: Sequence[tuple[str, int, str, str, str]],
        bands: Sequence[tuple[str, str]],
    ) -> None:
        """Store labelled responses ``(iid, ts, query, response, norm)`` and the ups' buckets."""
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO ups (iid, ts, query, response, norm) VALUES (?,?,?,?,?)", ups
        )
        self.db.executemany("INSERT INTO downs VALUES (?, ?, ?, ?, ?)", downs)
        self.db.executemany("INSERT INTO bands VALUES (?, ?)", bands)
        self.db.execute("COMMIT")

    def finish_rated(self) -> None:
        self.db.execute("CREATE INDEX bands_by_band ON bands (band)")

    def downs(self) -> Iterator[tuple[str, str, str, str]]:
        """Down-rated responses ``(iid, query, response, norm)``, oldest first."""
        yield from self.db.execute("SELECT iid, query, response, norm FROM downs ORDER BY ts, iid")

    def up_candidates(
        self, bands: Sequence[str], per_band: int, limit: int
    ) -> list[tuple[str, str, str, str, int, bytes | None]]:
        """Up-rated responses sharing the most buckets with ``bands`` (at most ``limit``).

        Each bucket is read up to ``per_band`` members, so the work per query is
        bounded however popular a bucket is. ``(iid, query, response, norm, uses, vec)``.
        """
        shared: Counter[str] = Counter()
        for band in bands:
            shared.update(
                iid
                for (iid,) in self.db.execute(
                    "SELECT iid FROM bands WHERE band = ? LIMIT ?", (band, per_band)
                )
            )
        best = [iid for iid, _ in shared.most_common(limit)]
        if not best:
            return []
        marks = ",".join("?" * len(best))
        return list(
            self.db.execute(
                f"""
                SELECT iid, query, response, norm, uses, vec FROM ups
                WHERE iid IN ({marks}) ORDER BY uses, ts, iid
                """,  # noqa: S608 - only placeholders are interpolated
                best,
            )
        )

    def exact_candidates(
        self, band: str, limit: int
    ) -> list[tuple[str, str, str, str, int, bytes | None]]:
        """Up-rated responses whose normalised query hashes to ``band``, least used first."""
        return list(
            self.db.execute(
                """
                SELECT u.iid, u.query, u.response, u.norm, u.uses, u.vec
                FROM bands b JOIN ups u ON u.iid = b.iid
                WHERE b.band = ?
                ORDER BY u.uses, u.ts, u.iid
                LIMIT ?
                """,
                (band, limit),
            )
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group many small updates (pairing) into one transaction."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def use_up(self, iid: str) -> None:
        self.db.execute("UPDATE ups SET uses = uses + 1 WHERE iid = ?", (iid,))

    def store_vector(self, iid: str, vec: bytes) -> None:
        self.db.execute("UPDATE ups SET vec = ? WHERE iid = ?", (vec, iid))

    def unused_ups(self) -> int:
        row = self.db.execute("SELECT count(*) FROM ups WHERE uses = 0").fetchone()
        return int(row[0])
