"""Export rows in the shapes TRL's trainers and the OpenAI fine-tuning API read.

The pydantic models below are the trainers' dataset schemas written down (field
names, nesting, roles and types), independent of the code under test; the
integration tests validate whole exported files with them too.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from learnloop.export import ExportError, default_owner, parse_time_ms
from learnloop.export.core import ExportSummary, _cosine, _sparse, _Stopped, _Vectors, _Writer
from learnloop.export.index import ExportIndex
from learnloop.export.rows import (
    check_options,
    clean,
    dpo_row,
    kto_row,
    normalise_query,
    query_bands,
    rating_score,
    sft_row,
    verdict,
    vote,
)
from processors.embedding import HashingEmbedder, cosine
from processors.redact import redactor

# --- the trainers' schemas ---------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class UserTurn(Message):
    role: Literal["user"]


class AssistantTurn(Message):
    role: Literal["assistant"]


class TrlConversational(_Strict):
    """TRL SFTTrainer, conversational language modeling: ``messages``."""

    messages: list[Message] = Field(min_length=2)

    @model_validator(mode="after")
    def _ends_with_assistant(self) -> TrlConversational:
        assert self.messages[-1].role == "assistant", "the last turn must be the assistant's"
        assert any(m.role == "user" for m in self.messages), "a user turn is needed"
        return self


class TrlPromptCompletion(_Strict):
    """TRL SFTTrainer, standard prompt-completion."""

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


class TrlPreference(_Strict):
    """TRL DPOTrainer, standard preference with explicit prompt."""

    prompt: str = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)

    @model_validator(mode="after")
    def _differ(self) -> TrlPreference:
        assert self.chosen != self.rejected, "chosen and rejected must differ"
        return self


class TrlConversationalPreference(_Strict):
    """TRL DPOTrainer, conversational preference with explicit prompt."""

    prompt: list[UserTurn] = Field(min_length=1)
    chosen: list[AssistantTurn] = Field(min_length=1, max_length=1)
    rejected: list[AssistantTurn] = Field(min_length=1, max_length=1)

    @model_validator(mode="after")
    def _differ(self) -> TrlConversationalPreference:
        assert self.chosen[0].content != self.rejected[0].content, "chosen equals rejected"
        return self


class TrlUnpaired(_Strict):
    """TRL KTOTrainer, standard unpaired preference."""

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)
    label: bool


class TrlConversationalUnpaired(_Strict):
    """TRL KTOTrainer, conversational unpaired preference."""

    prompt: list[UserTurn] = Field(min_length=1)
    completion: list[AssistantTurn] = Field(min_length=1, max_length=1)
    label: bool


class OpenAIChat(_Strict):
    """OpenAI supervised fine-tuning: ``messages`` with at least one assistant turn."""

    messages: list[Message] = Field(min_length=2)

    @model_validator(mode="after")
    def _has_assistant(self) -> OpenAIChat:
        assert any(m.role == "assistant" for m in self.messages), "no assistant turn"
        return self


class OpenAIInput(_Strict):
    messages: list[Message] = Field(min_length=1)


class OpenAIPreference(_Strict):
    """OpenAI preference (DPO) fine-tuning."""

    input: OpenAIInput
    preferred_output: list[AssistantTurn] = Field(min_length=1, max_length=1)
    non_preferred_output: list[AssistantTurn] = Field(min_length=1, max_length=1)


SCHEMAS: dict[tuple[str, str], tuple[type[BaseModel], ...]] = {
    ("sft", "messages"): (TrlConversational, OpenAIChat),
    ("sft", "prompt_completion"): (TrlPromptCompletion,),
    ("sft", "openai"): (OpenAIChat, TrlConversational),
    ("dpo", "messages"): (TrlConversationalPreference,),
    ("dpo", "prompt_completion"): (TrlPreference,),
    ("dpo", "openai"): (OpenAIPreference,),
    ("kto", "messages"): (TrlConversationalUnpaired,),
    ("kto", "prompt_completion"): (TrlUnpaired,),
}


def validate_rows(data: bytes, fmt: str, layout: str) -> list[dict[str, Any]]:
    """Every JSONL line of ``data`` parsed and validated against the trainer schemas."""
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        assert line.strip(), f"line {number} is empty"
        row = orjson.loads(line)
        for schema in SCHEMAS[(fmt, layout)]:
            schema.model_validate(row)
        rows.append(row)
    return rows


def texts(row: dict[str, Any]) -> list[str]:
    """Every string in a row (for checks that no foreign or personal text leaked)."""
    if isinstance(row, str):
        return [row]
    if isinstance(row, dict):
        return [t for value in row.values() for t in texts(value)]
    if isinstance(row, list):
        return [t for value in row for t in texts(value)]
    return []


# --- row builders --------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "layout"), sorted(SCHEMAS))
def test_every_builder_matches_its_trainer_schema(fmt: str, layout: str) -> None:
    if fmt == "sft":
        row = sft_row("how?", "like this", layout)  # type: ignore[arg-type]
    elif fmt == "dpo":
        row = dpo_row("how?", "like this", "not so", layout)  # type: ignore[arg-type]
    else:
        row = kto_row("how?", "like this", False, layout)  # type: ignore[arg-type]
    assert validate_rows(orjson.dumps(row), fmt, layout) == [row]


def test_exact_shapes() -> None:
    user = {"role": "user", "content": "q"}
    assistant = {"role": "assistant", "content": "a"}
    worse = {"role": "assistant", "content": "b"}
    assert sft_row("q", "a", "messages") == {"messages": [user, assistant]}
    assert sft_row("q", "a", "openai") == {"messages": [user, assistant]}
    assert sft_row("q", "a", "prompt_completion") == {"prompt": "q", "completion": "a"}
    assert dpo_row("q", "a", "b", "messages") == {
        "prompt": [user],
        "chosen": [assistant],
        "rejected": [worse],
    }
    assert dpo_row("q", "a", "b", "prompt_completion") == {
        "prompt": "q",
        "chosen": "a",
        "rejected": "b",
    }
    assert dpo_row("q", "a", "b", "openai") == {
        "input": {"messages": [user]},
        "preferred_output": [assistant],
        "non_preferred_output": [worse],
    }
    assert kto_row("q", "a", True, "messages") == {
        "prompt": [user],
        "completion": [assistant],
        "label": True,
    }
    assert kto_row("q", "a", False, "prompt_completion") == {
        "prompt": "q",
        "completion": "a",
        "label": False,
    }


def test_a_schema_rejects_a_wrong_row() -> None:
    with pytest.raises(ValueError, match="label"):
        validate_rows(
            b'{"prompt": "q", "completion": "a", "label": "yes"}', "kto", "prompt_completion"
        )
    with pytest.raises(ValueError, match="role"):
        validate_rows(
            orjson.dumps(dpo_row("q", "a", "b", "messages")).replace(b"user", b"bot"),
            "dpo",
            "messages",
        )


def test_options_are_checked() -> None:
    check_options("dpo", "openai", 0.5)
    with pytest.raises(ExportError, match="KTO"):
        check_options("kto", "openai", 0.0)
    with pytest.raises(ExportError, match="KTO"):
        kto_row("q", "a", True, "openai")
    with pytest.raises(ExportError, match="format"):
        check_options("orpo", "messages", 0.0)
    with pytest.raises(ExportError, match="layout"):
        check_options("sft", "alpaca", 0.0)
    with pytest.raises(ExportError, match="min_agreement"):
        check_options("sft", "messages", 1.5)


# --- ratings -----------------------------------------------------------------------------


def test_rating_scores_and_votes() -> None:
    assert rating_score(1, None, None) == 1.0
    assert rating_score(-1, None, None) == 0.0
    assert rating_score(None, 4, 5) == pytest.approx(0.8)
    assert rating_score(None, 9, 10) == pytest.approx(0.9)
    assert rating_score(None, 12, 10) == 1.0
    assert rating_score(None, None, None) is None
    assert rating_score(None, 3, 0) is None
    # thresholds shared with aggregation and synthesis (processors/ratings.py): 0.8 and 0.4
    assert [vote(s) for s in (1.0, 0.8, 0.79, 0.5, 0.41, 0.4, 0.0)] == [1, 1, 0, 0, 0, -1, -1]


def test_verdict_majority_and_agreement() -> None:
    assert verdict(1, 0, 1, 1.0).label == 1  # one rating agrees with itself
    assert verdict(0, 1, 1, 1.0).label == -1
    two_of_three = verdict(2, 1, 3, 0.5)
    assert two_of_three.label == 1 and two_of_three.agreement == pytest.approx(2 / 3)
    assert verdict(2, 1, 3, 0.8) == verdict(2, 1, 3, 0.8)
    assert verdict(2, 1, 3, 0.8).reason == "ratings_disagree"
    assert verdict(1, 1, 2, 0.0).reason == "ratings_disagree"
    assert verdict(0, 0, 2, 0.0).reason == "neutral_rating"
    assert verdict(2, 0, 4, 0.6).reason == "ratings_disagree"  # neutral ratings dilute


# --- queries -------------------------------------------------------------------------------


def test_normalised_queries_ignore_case_and_punctuation() -> None:
    assert normalise_query("How do I call the Billing-API?") == normalise_query(
        "how do i  call the billing api"
    )
    assert normalise_query("rotate the token") != normalise_query("rotate the key")


def test_query_bands_bucket_similar_questions_together() -> None:
    same = query_bands("How do I rotate the deploy token?")
    assert same[0] == query_bands("how do i rotate the DEPLOY token")[0]
    near = query_bands("how can I rotate the deploy token please")
    assert near[0] != same[0] and set(near[1:]) & set(same[1:])
    other = query_bands("what is the refund policy for annual plans")
    assert not set(other) & set(same)
    assert len(query_bands("how do i?")) == 1  # no content words: exact key only


def test_sparse_cosine_is_the_embedders_cosine() -> None:
    vectors, embedder = _Vectors(), HashingEmbedder()
    for a, b in [
        ("page the on-call engineer for the search cluster", "page on-call of search cluster"),
        ("rotate the deploy token", "what is the refund policy"),
    ]:
        dense = cosine(*embedder.embed([a, b]))
        assert _cosine(_sparse(vectors.of(a)), _sparse(vectors.of(b))) == pytest.approx(
            dense, abs=1e-5
        )
    for n in range(600):  # past the cache trim
        vectors.of(f"question number {n}")


def test_clean_redacts_personal_data() -> None:
    redact = redactor(())
    cleaned = clean("  mail alice@example.com or call +1 415 555 0100  ", redact)
    assert cleaned == "mail [EMAIL] or call [PHONE]"
    assert clean(None, redact) == ""
    assert clean("ticket ACME-1234", redactor((r"ACME-\d+",))) == "ticket [REDACTED]"


def test_times_and_owners() -> None:
    assert parse_time_ms("1764057600000") == 1_764_057_600_000
    assert parse_time_ms("2025-11-25") == 1_764_028_800_000
    assert parse_time_ms("2025-11-25T08:00:00Z") == 1_764_057_600_000
    assert parse_time_ms("2025-11-25T09:00:00+01:00") == 1_764_057_600_000
    with pytest.raises(ExportError):
        parse_time_ms("last tuesday")
    assert default_owner("org:acme") == "acme"
    assert default_owner("team:search") is None
    assert default_owner("global") is None


# --- the write pass on a hand-filled index (no broker) ----------------------------------------


def _write(
    tmp_path: Path, fmt: str, layout: str = "prompt_completion", **kw: Any
) -> tuple[list[dict[str, Any]], ExportSummary]:
    index = ExportIndex(tmp_path / f"{uuid.uuid4().hex}.sqlite3")
    try:
        index.add(
            [
                ("i1", "i1", 1, "alice", "acme", "How do I rotate the token?", "rotate it"),
                ("i2", "i2", 2, "bob", "acme", "how do i rotate the token", "delete it"),
                ("i3", "i3", 3, "bob", "acme", "page the on-call for search", "use pager"),
                ("i4", "i4", 4, "carol", "acme", "page on-call of search please", "email"),
                ("i5", "i5", 5, "carol", "beta", "beta question", "beta answer"),
                ("i6", "i6", 6, "dave", None, "mail me at dave@example.com", "ok dave"),
            ],
            [
                ("r1", "i1", "rating", 10, "alice", "acme", 1.0, None, None),
                ("r2", "i2", "rating", 11, "bob", "acme", 0.0, None, None),
                ("r3", "i3", "rating", 12, "bob", "acme", 0.9, None, None),
                ("r4", "i4", "rating", 13, "carol", "acme", 0.2, None, None),
                ("r5", "i5", "rating", 14, "carol", "beta", 1.0, None, None),
                ("r6a", "i6", "rating", 15, "dave", None, 1.0, None, None),
                ("r6b", "i6", "rating", 16, "erin", None, 0.0, None, None),
                ("r6c", "i6", "rating", 17, "fred", None, 1.0, None, None),
                ("r7", "i404", "rating", 18, "fred", "acme", 1.0, None, None),
                ("e1", "i1", "edit", 19, "alice", "acme", None, "rotate it", "rotate it daily"),
                ("e2", "i2", "edit", 20, "bob", "acme", None, "delete it", "delete it"),
            ],
        )
        assert index.add([], [("r1", "i1", "rating", 10, "alice", "acme", 1.0, None, None)]) == 1
        assert index.finish_loading("acme") == 2  # i5 and r5 belong to beta
        summary = ExportSummary(group="team:search", format=fmt, layout=layout)  # type: ignore[arg-type]
        out = tmp_path / "out.jsonl"
        with out.open("wb") as handle:
            _Writer(
                index,
                handle,
                fmt,  # type: ignore[arg-type]
                layout,  # type: ignore[arg-type]
                kw.get("min_agreement", 0.0),
                redactor(()),
                summary,
            ).run()
    finally:
        index.close()
    return validate_rows(out.read_bytes(), fmt, layout), summary


def test_sft_from_edits_and_high_ratings(tmp_path: Path) -> None:
    rows, summary = _write(tmp_path, "sft")
    assert rows == [
        {"prompt": "How do I rotate the token?", "completion": "rotate it daily"},
        {"prompt": "page the on-call for search", "completion": "use pager"},
        {"prompt": "mail me at [EMAIL]", "completion": "ok dave"},
    ]
    assert summary.sources == {"edit": 1, "rating": 2}
    assert summary.skipped == {
        "unchanged_edit": 1,
        "superseded_by_edit": 1,
        "low_rating": 2,
        "no_interaction": 1,
    }
    rows, summary = _write(tmp_path, "sft", min_agreement=0.7)
    assert len(rows) == 2 and summary.skipped["ratings_disagree"] == 1


def test_dpo_from_edits_and_rating_pairs(tmp_path: Path) -> None:
    rows, summary = _write(tmp_path, "dpo")
    assert rows == [
        {
            "prompt": "How do I rotate the token?",
            "chosen": "rotate it daily",
            "rejected": "rotate it",
        },
        {"prompt": "How do I rotate the token?", "chosen": "rotate it", "rejected": "delete it"},
        {"prompt": "page the on-call for search", "chosen": "use pager", "rejected": "email"},
    ]
    assert summary.sources == {"edit": 1, "rating_pair": 2}
    assert summary.skipped["no_counterpart"] == 1  # i6: liked, but nobody disliked a twin


def test_kto_from_single_ratings(tmp_path: Path) -> None:
    rows, summary = _write(tmp_path, "kto", "messages")
    labels = [(r["prompt"][0]["content"], r["label"]) for r in rows]
    assert labels == [
        ("How do I rotate the token?", True),
        ("how do i rotate the token", False),
        ("page the on-call for search", True),
        ("page on-call of search please", False),
        ("mail me at [EMAIL]", True),
    ]
    assert summary.sources == {"rating": 5}
    assert not any(re.search(r"\w@\w", t) for row in rows for t in texts(row))


def test_a_cancelled_export_stops_between_examples(tmp_path: Path) -> None:
    index = ExportIndex(tmp_path / "stopped.sqlite3")
    try:
        index.add([("i1", "i1", 1, "alice", None, "q", "a")], [])
        index.add([], [("r1", "i1", "rating", 2, "alice", None, 1.0, None, None)])
        index.finish_loading(None)
        stop = threading.Event()
        stop.set()
        summary = ExportSummary(group="global", format="sft", layout="messages")
        writer = _Writer(index, io.BytesIO(), "sft", "messages", 0.0, redactor(()), summary, stop)
        with pytest.raises(_Stopped):
            writer.run()
        assert summary.written == 0
    finally:
        index.close()
