"""``export(...)``: one group's feedback as a fine-tuning dataset, streamed to JSONL.

Two passes, neither of which holds the dataset in memory:

1. **Read** the commands topic (small) for ``forget_user`` commands, then the events
   topic from its beginning to the end fixed at the start. Each event is decoded,
   kept only if it resolves to the group, is not from a forgotten user and (for
   feedback) lies in the time range, and written to an on-disk SQLite index keyed
   by interaction id (:mod:`learnloop.export.index`).
2. **Write**: drop the events of tenants other than the group's owner, then walk
   the index with cursors (edits; ratings grouped per interaction; down-rated
   responses against a bounded bucket of up-rated ones for similar queries) and
   write one redacted JSONL row per example as it goes.

The write pass runs in a worker thread so an API event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from learnloop.codec import make_codec
from learnloop.export.index import ExportIndex, FeedbackRow, InteractionRow
from learnloop.export.reader import read_topic
from learnloop.export.rows import (
    SIMILAR_QUERY,
    ExportError,
    Format,
    Layout,
    Row,
    check_options,
    clean,
    dpo_row,
    kto_row,
    normalise_query,
    query_bands,
    rating_score,
    sft_row,
    verdict,
)
from learnloop.settings import Settings
from processors.embedding import HashingEmbedder
from processors.groups import resolve_groups
from processors.redact import redactor
from schemas import DecodeError, EventCodec

#: up-rated responses compared with one down-rated response, and members read per bucket:
#: together they bound the pairing work per response, however popular a question is
PAIR_CANDIDATES: Final = 16
BUCKET_READ: Final = 32
#: the embedder's LRU cache is cleared after this many vectors (see _Vectors)
EMBEDDER_RENEW: Final = 64

Progress = Callable[[int], None]


@dataclass(slots=True)
class ExportSummary:
    """What an export wrote and what it left out, by reason.

    ``skipped`` counts events for the reasons met while reading (``other_group``,
    ``other_tenant``, ``forgotten_user``, ``outside_time_range``, ``duplicate``,
    ``undecodable``, ``unused_kind``) and candidate examples for the reasons met
    while writing (``no_interaction``, ``empty_text``, ``unchanged_edit``,
    ``neutral_rating``, ``ratings_disagree``, ``low_rating``, ``superseded_by_edit``,
    ``no_counterpart``, ``same_response``). ``sources`` counts rows written by what
    they came from: ``edit``, ``rating`` or ``rating_pair``.
    """

    group: str
    format: Format
    layout: Layout
    owner: str | None = None
    events_read: int = 0
    forgotten_users: int = 0
    written: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "format": self.format,
            "layout": self.layout,
            "owner": self.owner,
            "events_read": self.events_read,
            "forgotten_users": self.forgotten_users,
            "written": self.written,
            "sources": dict(sorted(self.sources.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds from ``1764057600000``, ``2026-11-25`` or ``2026-11-25T08:00:00Z``.

    Times without a zone are UTC.
    """
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ExportError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def default_owner(group: str) -> str | None:
    """The tenant an ``org:`` group belongs to by name; None for the others."""
    return group.split(":", 1)[1] if group.startswith("org:") else None


async def forgotten_users(settings: Settings, bootstrap: str) -> set[str]:
    """Every user named by a ``forget_user`` command on the commands topic."""
    users: set[str] = set()

    def collect(records: list[tuple[bytes | None, bytes | None]]) -> None:
        for _, value in records:
            try:
                command = orjson.loads(value or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(command, dict) and command.get("type") == "forget_user":
                user = command.get("user_id")
                if isinstance(user, str) and user:
                    users.add(user)

    await read_topic(
        bootstrap, settings.topics.commands, collect, true_ends=settings.true_end_offsets
    )
    return users


class _Loader:
    """Pass 1: decode, filter and index one batch of event records at a time."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        fmt: Format,
        forgotten: set[str],
        since_ms: int | None,
        until_ms: int | None,
        index: ExportIndex,
        summary: ExportSummary,
        progress: Progress | None,
    ) -> None:
        self.group = group
        self.rules = settings.derived_groups
        self.kinds = {"rating", "edit"} if fmt != "kto" else {"rating"}
        self.forgotten = forgotten
        self.since_ms = since_ms
        self.until_ms = until_ms
        self.index = index
        self.summary = summary
        self.progress = progress
        self.codec: EventCodec = make_codec(settings)
        # (timestamp, event_id, org) of the group's earliest event that names an org
        self.first_org: tuple[int, str, str] | None = None

    def __call__(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        skipped = self.summary.skipped
        interactions: list[InteractionRow] = []
        feedback: list[FeedbackRow] = []
        for _, value in records:
            try:
                event = self.codec.decode(value)
            except DecodeError:
                skipped["undecodable"] += 1
                continue
            user, org, kind = event["user_id"], event["org_id"], event["type"]
            groups = resolve_groups(user, event["team_id"], org, event["metadata"], self.rules)
            if self.group not in groups:
                skipped["other_group"] += 1
                continue
            stamp = event["timestamp"]
            if org and (self.first_org is None or (stamp, event["event_id"]) < self.first_org[:2]):
                self.first_org = (stamp, event["event_id"], org)
            if user in self.forgotten:
                skipped["forgotten_user"] += 1
            elif kind == "interaction":
                payload = event.get("interaction") or {"query": "", "response": ""}
                iid = event["interaction_id"] or event["event_id"]
                interactions.append(
                    (
                        iid,
                        event["event_id"],
                        stamp,
                        user,
                        org,
                        payload["query"],
                        payload["response"],
                    )
                )
            elif kind not in self.kinds:
                skipped["unused_kind"] += 1
            elif (self.since_ms is not None and stamp < self.since_ms) or (
                self.until_ms is not None and stamp >= self.until_ms
            ):
                skipped["outside_time_range"] += 1
            elif kind == "rating":
                rating = event.get("rating") or {"value": None, "score": None, "scale": None}
                score = rating_score(rating["value"], rating["score"], rating["scale"])
                head = (event["event_id"], str(event["interaction_id"]), "rating", stamp, user)
                feedback.append((*head, org, score, None, None))
            else:
                edit = event.get("edit") or {"original": "", "edited": ""}
                head = (event["event_id"], str(event["interaction_id"]), "edit", stamp, user)
                feedback.append((*head, org, None, edit["original"], edit["edited"]))
        if interactions or feedback:
            duplicates = self.index.add(interactions, feedback)
            if duplicates:
                skipped["duplicate"] += duplicates
        self.summary.events_read += len(records)
        if self.progress is not None:
            self.progress(self.summary.events_read)


class _Vectors:
    """HashingEmbedder vectors, kept sparse: ``(index, value)`` of the non-zero dimensions.

    A query has a few dozen features, so its 384-dimension vector is mostly zeros;
    the dot product over the non-zeros is the same cosine at a fraction of the work.
    The embedder memoises up to 8192 vectors (~100 MB as Python floats) in a cache
    that references the embedder itself, so dropping the embedder frees nothing until
    the cycle collector runs: the cache is cleared every few hundred vectors instead.
    """

    def __init__(self) -> None:
        self._embedder = HashingEmbedder()
        self._made = 0

    def _trim(self) -> None:
        cache = getattr(self._embedder, "_cached", None)
        clear = getattr(cache, "cache_clear", None)
        if callable(clear):
            clear()
        else:  # a future embedder without that cache: a fresh one is as good
            self._embedder = HashingEmbedder()
        self._made = 0

    def of(self, text: str) -> bytes:
        if self._made >= EMBEDDER_RENEW:
            self._trim()
        self._made += 1
        vector = self._embedder.embed([text])[0]
        nonzero = [i for i, x in enumerate(vector) if x]
        values = [vector[i] for i in nonzero]
        return array("H", nonzero).tobytes() + array("f", values).tobytes()


def _sparse(packed: bytes) -> dict[int, float]:
    n = len(packed) // 6
    return dict(zip(array("H", packed[: 2 * n]), array("f", packed[2 * n :]), strict=True))


def _cosine(a: dict[int, float], b: dict[int, float]) -> float:
    """Dot product of two unit vectors given sparsely (zero vectors give 0)."""
    if len(b) < len(a):
        a, b = b, a
    return sum(x * b[i] for i, x in a.items() if i in b)


class _Stopped(Exception):
    """The export was cancelled while the write pass ran in its thread."""


class _Writer:
    """Pass 2: walk the index and write one JSONL row per example."""

    def __init__(
        self,
        index: ExportIndex,
        out: BinaryIO,
        fmt: Format,
        layout: Layout,
        min_agreement: float,
        redact: Callable[[str], str],
        summary: ExportSummary,
        stop: threading.Event | None = None,
    ) -> None:
        self.index = index
        self.out = out
        self.fmt = fmt
        self.layout = layout
        self.min_agreement = min_agreement
        self.redact = redact
        self.summary = summary
        self.stop = stop or threading.Event()

    def check(self) -> None:
        """Give up between examples when the export was cancelled."""
        if self.stop.is_set():
            raise _Stopped

    def write(self, row: Row, source: str) -> None:
        self.out.write(orjson.dumps(row) + b"\n")
        self.summary.written += 1
        self.summary.sources[source] += 1

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.summary.skipped[reason] += count

    def run(self) -> None:
        if self.fmt in ("sft", "dpo"):
            self.edits()
        self.ratings()
        if self.fmt == "dpo":
            self.pairs()

    def edits(self) -> None:
        for _, query, original, edited, response in self.index.edits():
            self.check()
            if query is None:
                self.skip("no_interaction")
                continue
            prompt, better = clean(query, self.redact), clean(edited, self.redact)
            worse = clean(original or response, self.redact)
            if not prompt or not better:
                self.skip("empty_text")
            elif better == worse:
                self.skip("unchanged_edit")
            elif self.fmt == "sft":
                self.write(sft_row(prompt, better, self.layout), "edit")
            elif not worse:
                self.skip("empty_text")
            else:
                self.write(dpo_row(prompt, better, worse, self.layout), "edit")

    def ratings(self) -> None:
        ups: list[tuple[str, int, str, str, str]] = []
        downs: list[tuple[str, int, str, str, str]] = []
        bands: list[tuple[str, str]] = []
        for iid, n, up, down, ts, query, response, edited in self.index.rated():
            self.check()
            if query is None or response is None:
                self.skip("no_interaction")
                continue
            judged = verdict(up, down, n, self.min_agreement)
            if judged.reason is not None:
                self.skip(judged.reason)
                continue
            if self.fmt == "dpo":
                entry = (iid, ts, query, response, normalise_query(query))
                if judged.label > 0:
                    ups.append(entry)
                    bands.extend((band, iid) for band in query_bands(query))
                else:
                    downs.append(entry)
                if len(ups) + len(downs) >= 500:
                    self.index.add_rated(ups, downs, bands)
                    ups, downs, bands = [], [], []
                continue
            prompt, completion = clean(query, self.redact), clean(response, self.redact)
            if not prompt or not completion:
                self.skip("empty_text")
            elif self.fmt == "kto":
                self.write(kto_row(prompt, completion, judged.label > 0, self.layout), "rating")
            elif judged.label < 0:
                self.skip("low_rating")
            elif edited:
                self.skip("superseded_by_edit")
            else:
                self.write(sft_row(prompt, completion, self.layout), "rating")
        if self.fmt == "dpo":
            self.index.add_rated(ups, downs, bands)
            self.index.finish_rated()

    def pairs(self) -> None:
        """Each down-rated response against the up-rated ones to the same or a similar query."""
        vectors = _Vectors()
        with self.index.transaction():
            for _, query, response, norm in self.index.downs():
                self.check()
                keys = query_bands(query)
                best = None
                for iid, _q, up_response, up_norm, _uses, _vec in self.index.exact_candidates(
                    keys[0], PAIR_CANDIDATES
                ):
                    if up_norm == norm and up_response != response:
                        best = (iid, _q, up_response)
                        break
                if best is None and len(keys) > 1:
                    mine = _sparse(vectors.of(query))
                    top = -1.0
                    for iid, up_query, up_response, _n, _uses, vec in self.index.up_candidates(
                        keys[1:], BUCKET_READ, PAIR_CANDIDATES
                    ):
                        if up_response == response:
                            continue
                        if vec is None:
                            vec = vectors.of(up_query)
                            self.index.store_vector(iid, vec)
                        similarity = _cosine(mine, _sparse(vec))
                        # candidates come least used first: a tie keeps the less used one
                        if similarity >= SIMILAR_QUERY and similarity > top + 1e-9:
                            best, top = (iid, up_query, up_response), similarity
                if best is None:
                    self.skip("no_counterpart")
                    continue
                up_iid, up_query, up_response = best
                prompt = clean(up_query, self.redact)
                chosen, rejected = clean(up_response, self.redact), clean(response, self.redact)
                if not prompt or not chosen or not rejected:
                    self.skip("empty_text")
                elif chosen == rejected:
                    self.skip("same_response")
                else:
                    self.index.use_up(up_iid)
                    self.write(dpo_row(prompt, chosen, rejected, self.layout), "rating_pair")
        self.skip("no_counterpart", self.index.unused_ups())


async def export(
    settings: Settings,
    bootstrap: str,
    group: str,
    fmt: Format,
    out: BinaryIO | str | os.PathLike[str],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    min_agreement: float = 0.0,
    layout: Layout = "messages",
    progress: Progress | None = None,
    on_total: Progress | None = None,
    owner: str | None = None,
) -> ExportSummary:
    """Write ``group``'s examples for ``fmt`` as JSONL to ``out``; return what was written.

    ``out`` is a binary file object, or a path written atomically (``<path>.part``
    renamed on success). ``since_ms``/``until_ms`` bound the time of the feedback
    (inclusive/exclusive, epoch ms); ``min_agreement`` is the share of an
    interaction's ratings that must vote with the majority. ``progress`` is called
    with the number of events read so far, ``on_total`` once with the number to read.
    ``owner`` is the tenant that owns the group (as the workers recorded it); by
    default any group but ``org:X`` (owned by ``X``) and ``global`` (by nobody) is
    owned by the org of its earliest event that names one, as the workers decide.
    Events that name no org belong to every tenant, as in aggregation.
    """
    check_options(fmt, layout, min_agreement)
    if group != "global" and (":" not in group or not all(group.split(":", 1))):
        raise ExportError(f"group must look like kind:value or be global, got {group!r}")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise ExportError("since must be before until")
    summary = ExportSummary(group=group, format=fmt, layout=layout)
    forgotten = await forgotten_users(settings, bootstrap)
    summary.forgotten_users = len(forgotten)
    with tempfile.TemporaryDirectory(prefix="learnloop-export-") as scratch:
        index = ExportIndex(Path(scratch) / "index.sqlite3")
        try:
            loader = _Loader(
                settings, group, fmt, forgotten, since_ms, until_ms, index, summary, progress
            )
            await read_topic(
                bootstrap,
                settings.topics.events,
                loader,
                true_ends=settings.true_end_offsets,
                on_total=on_total,
            )
            if group == "global":
                owner = None  # every tenant's events reach global (export it with care)
            else:
                owner = default_owner(group) or owner
                if owner is None and loader.first_org is not None:
                    owner = loader.first_org[2]
            summary.owner = owner
            dropped = index.finish_loading(owner)
            if dropped:
                summary.skipped["other_tenant"] += dropped
            redact = redactor(tuple(settings.redact_patterns))
            stop = threading.Event()
            job = asyncio.ensure_future(
                asyncio.to_thread(
                    _write_out, index, out, fmt, layout, min_agreement, redact, summary, stop
                )
            )
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                # the thread still uses the index: stop it and wait before removing the file
                stop.set()
                with contextlib.suppress(_Stopped):
                    await job
                raise
        finally:
            index.close()
    return summary


def _write_out(
    index: ExportIndex,
    out: BinaryIO | str | os.PathLike[str],
    fmt: Format,
    layout: Layout,
    min_agreement: float,
    redact: Callable[[str], str],
    summary: ExportSummary,
    stop: threading.Event,
) -> None:
    if not isinstance(out, str | os.PathLike):
        _Writer(index, out, fmt, layout, min_agreement, redact, summary, stop).run()
        out.flush()
        return
    path = Path(out)
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("wb") as handle:
            _Writer(index, handle, fmt, layout, min_agreement, redact, summary, stop).run()
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _new_file(directory: str | None) -> Path:
    handle, name = tempfile.mkstemp(prefix="learnloop-export-", suffix=".jsonl", dir=directory)
    os.close(handle)
    return Path(name)


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


async def export_to_tempfile(
    settings: Settings,
    bootstrap: str,
    group: str,
    fmt: Format,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    min_agreement: float = 0.0,
    layout: Layout = "messages",
    owner: str | None = None,
    directory: str | None = None,
) -> tuple[Path, ExportSummary]:
    """:func:`export` into a new temporary file, for serving it once complete.

    The caller removes the file when done with it (an HTTP response's background
    task); on any failure, cancellation included, it is removed here.
    """
    path = _new_file(directory)
    try:
        summary = await export(
            settings,
            bootstrap,
            group,
            fmt,
            path,
            since_ms=since_ms,
            until_ms=until_ms,
            min_agreement=min_agreement,
            layout=layout,
            owner=owner,
        )
    except BaseException:
        _discard(path)
        raise
    return path, summary
