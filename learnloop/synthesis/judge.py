"""An optional LLM judge: derived ratings for interactions nobody rated (case 0 of the brief).

Most interactions get no explicit feedback. When an LLM is configured, :func:`judge`
scores a deterministic sample of them (the same interaction is always in or out
of the sample, so a replay asks about the same ones) and returns *derived* ratings:
rating events whose id is ``judge:<interaction_id>`` (a resent one is ignored
downstream), marked ``"derived": True`` and ``metadata.derived_by = "llm_judge"``
so aggregation can weigh them below people's ratings. Only confident ``good`` or
``bad`` verdicts become ratings; ``unsure`` gives none.

Interactions are redacted before they are sent, and one that reads as an attempt
to instruct the judge is not judged at all. It uses the same :class:`ChatClient`
(retries, breaker, concurrency limit, accounting) as synthesis; its tokens and
cost are counted under the synthesizer label ``llm_judge``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from pydantic import ValidationError

from learnloop import metrics
from learnloop.synthesis.client import ChatClient
from learnloop.synthesis.errors import SynthesisUnavailable
from learnloop.synthesis.parsing import (
    MAX_FIELD_CHARS,
    VERDICTS_SCHEMA,
    LLMVerdict,
    MalformedOutput,
    boundary_for,
    data_lines,
    parse_verdicts,
)
from learnloop.synthesis.templates import PromptSet, load_prompts
from processors.judging import sample_rank, sampled
from processors.redact import redactor
from processors.synthesis.guard import injection_reason

log = structlog.get_logger(__name__)

JUDGE_LABEL: Final = "llm_judge"
DERIVED_BY: Final = "llm_judge"


def _field(interaction: Mapping[str, Any], name: str) -> Any:
    """A field of an interaction in any of its shapes: flat event JSON, record, or signal."""
    if interaction.get(name) is not None:
        return interaction[name]
    for nested in ("interaction", "payload"):
        inner = interaction.get(nested)
        if isinstance(inner, Mapping) and inner.get(name) is not None:
            return inner[name]
    return None


def interaction_id_of(interaction: Mapping[str, Any]) -> str:
    return str(interaction.get("interaction_id") or interaction.get("event_id") or "")


def _rfc3339(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _view(
    interaction: Mapping[str, Any], alias: str, redact: Callable[[str], str], max_chars: int
) -> dict[str, Any]:
    def clip(text: str) -> str:
        text = redact(text)
        return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"

    view: dict[str, Any] = {
        "id": alias,
        "query": clip(str(_field(interaction, "query") or "")),
        "response": clip(str(_field(interaction, "response") or "")),
    }
    calls = []
    for call in _field(interaction, "tool_calls") or []:
        if isinstance(call, Mapping):
            entry = {"name": str(call.get("name") or ""), "status": str(call.get("status") or "")}
            if call.get("error"):
                entry["error"] = clip(str(call["error"]))[:300]
            calls.append(entry)
    if calls:
        view["tool_calls"] = calls
    return view


def derived_rating(
    interaction: Mapping[str, Any],
    value: int,
    *,
    confidence: float,
    model: str,
    prompt_version: str,
    now_ms: int,
) -> dict[str, Any]:
    """A rating event derived from a verdict, in the brief's flat JSON form plus ``derived``."""
    iid = interaction_id_of(interaction)
    metadata = {
        str(k): str(v) for k, v in (interaction.get("metadata") or {}).items() if v is not None
    }
    metadata.update(
        {
            "derived_by": DERIVED_BY,
            "judge_model": model,
            "judge_prompt_version": prompt_version,
            "judge_confidence": f"{confidence:.2f}",
        }
    )
    rating: dict[str, Any] = {
        "event_id": f"judge:{iid}",
        "type": "rating",
        "timestamp": _rfc3339(now_ms),
        "user_id": str(interaction.get("user_id") or ""),
        "interaction_id": iid,
        "metadata": metadata,
        "value": value,
        "derived": True,
    }
    for name in ("team_id", "org_id"):
        if interaction.get(name):
            rating[name] = interaction[name]
    return rating


def as_event(rating: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of a derived rating: the event schema has no ``derived`` field, so
    the mark travels as ``metadata.derived_by``."""
    return {k: v for k, v in rating.items() if k != "derived"}


async def judge(
    interactions: Sequence[Mapping[str, Any]],
    *,
    client: ChatClient,
    now_ms: int,
    sample_rate: float = 0.1,
    max_items: int = 20,
    batch_size: int = 10,
    min_confidence: float = 0.7,
    exclude_ids: Collection[str] = (),
    seed: str = "",
    prompt_version: str = "v1",
    redact_patterns: Sequence[str] = (),
    max_chars: int = MAX_FIELD_CHARS,
) -> list[dict[str, Any]]:
    """Derived ratings for a sample of ``interactions`` that got no explicit feedback.

    ``exclude_ids`` are interaction ids that already have explicit feedback (the caller
    knows them from the join state). Raises :class:`SynthesisUnavailable` when the
    endpoint cannot serve the request now; ratings have deterministic ids, so asking
    again later is safe.
    """
    prompts = load_prompts(prompt_version)
    redact = redactor(tuple(redact_patterns))
    excluded = set(exclude_ids)
    chosen: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    # lowest ranks first: with a cap, the same interactions are chosen on every run
    ranked = sorted(
        interactions, key=lambda i: (sample_rank(interaction_id_of(i), seed), interaction_id_of(i))
    )
    for interaction in ranked:
        iid = interaction_id_of(interaction)
        if not iid or iid in seen or iid in excluded or not sampled(iid, sample_rate, seed):
            continue
        seen.add(iid)
        response = _field(interaction, "response")
        if not isinstance(response, str) or not response.strip():
            continue
        text = f"{_field(interaction, 'query') or ''}\n{response}"
        if injection_reason(text) is not None:
            log.info("judge skipped interaction that reads as instructions", interaction_id=iid)
            continue
        chosen.append(interaction)
        if len(chosen) >= max_items:
            break
    ratings: list[dict[str, Any]] = []
    for start in range(0, len(chosen), max(1, batch_size)):
        batch = chosen[start : start + max(1, batch_size)]
        ratings += await _judge_batch(
            batch, client, prompts, redact, now_ms, min_confidence, prompt_version, max_chars
        )
    return ratings


async def _judge_batch(
    batch: Sequence[Mapping[str, Any]],
    client: ChatClient,
    prompts: PromptSet,
    redact: Callable[[str], str],
    now_ms: int,
    min_confidence: float,
    prompt_version: str,
    max_chars: int,
) -> list[dict[str, Any]]:
    started = time.perf_counter()
    outcome = "error"
    try:
        by_alias = {f"I{n}": item for n, item in enumerate(batch, start=1)}
        boundary = boundary_for("judge\x1f" + "\x1f".join(interaction_id_of(i) for i in batch))
        views = [_view(item, alias, redact, max_chars) for alias, item in by_alias.items()]
        messages = [
            {"role": "system", "content": prompts.render("judge_system")},
            {
                "role": "user",
                "content": prompts.render(
                    "judge_user", boundary=boundary, interactions=data_lines(views, boundary)
                ),
            },
        ]
        reply = await client.complete(
            messages,
            schema_name="learnloop_judge_verdicts",
            schema=VERDICTS_SCHEMA,
            label=JUDGE_LABEL,
        )
        if reply.refused:
            outcome = "refused"
            return []
        try:
            raw = parse_verdicts(reply.content)
        except MalformedOutput as exc:
            outcome = "malformed_output"
            log.info("judge output malformed", error=str(exc))
            return []
        out: list[dict[str, Any]] = []
        done: set[str] = set()
        for entry in raw:
            try:
                verdict = LLMVerdict.model_validate(entry)
            except ValidationError:
                continue
            item = by_alias.get(verdict.id)
            if item is None or verdict.id in done:
                continue
            done.add(verdict.id)
            if verdict.verdict == "unsure" or verdict.confidence < min_confidence:
                continue
            out.append(
                derived_rating(
                    item,
                    1 if verdict.verdict == "good" else -1,
                    confidence=verdict.confidence,
                    model=client.model,
                    prompt_version=prompt_version,
                    now_ms=now_ms,
                )
            )
        outcome = "ok"
        return out
    except SynthesisUnavailable:
        outcome = "unavailable"
        raise
    finally:
        metrics.SYNTHESIS_REQUESTS.labels(JUDGE_LABEL, outcome).inc()
        metrics.SYNTHESIS_SECONDS.labels(JUDGE_LABEL).observe(time.perf_counter() - started)
