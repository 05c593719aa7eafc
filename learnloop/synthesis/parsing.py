"""Pure helpers of LLM synthesis: what is sent, and how what comes back is checked.

Nothing here does I/O. Going out: evidence is redacted, given short aliases
(``E1``, ``E2``... for events, ``u1``, ``u2``... for users, so neither producer
ids nor user ids reach the model), evidence that reads as instructions is held
back, and the rest is written as JSON lines inside a data block whose boundary
the data cannot forge. Coming back: the reply is parsed leniently (code fences,
prose around the object) but validated strictly, one rule at a time, so one bad
rule does not sink the others; and a rule counts as supported only by cited
evidence that actually says something like it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b, sha256
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from processors.embedding import GENERIC, content_tokens, normalise
from processors.ratings import polarity as signal_polarity
from processors.synthesis.base import skip
from processors.synthesis.guard import injection_reason

Evidence = dict[str, Any]
RuleKind = Literal["rule", "tool_rule", "preferred_example", "avoided_example", "correction"]
RULE_KINDS: Final[tuple[str, ...]] = (
    "rule",
    "tool_rule",
    "preferred_example",
    "avoided_example",
    "correction",
)
MAX_TEXT_CHARS: Final = 400
MAX_FIELD_CHARS: Final = 1200
MAX_ARGUMENT_CHARS: Final = 300
MIN_COVERAGE: Final = 0.25
_ALIAS_RE: Final = re.compile(r"^[Ee]?(\d{1,4})$")
_FENCE_RE: Final = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)

RULES_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": list(RULE_KINDS)},
                    "text": {"type": "string"},
                    "supporting_event_ids": {"type": "array", "items": {"type": "string"}},
                    "rationale": {"type": "string"},
                },
                "required": ["kind", "text", "supporting_event_ids", "rationale"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["rules"],
    "additionalProperties": False,
}

VERDICTS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "verdicts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "verdict": {"type": "string", "enum": ["good", "bad", "unsure"]},
                    "confidence": {"type": "number"},
                    "reason": {"type": "string"},
                },
                "required": ["id", "verdict", "confidence", "reason"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["verdicts"],
    "additionalProperties": False,
}


class MalformedOutput(ValueError):
    """The model's answer is not the JSON object asked for; ``str()`` says why, briefly."""


def _alias(value: object) -> str:
    text = str(value).strip()
    match = _ALIAS_RE.match(text)
    return f"E{int(match.group(1))}" if match else text


class LLMRule(BaseModel):
    """One item as the model proposes it (checked again against the evidence later)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)

    kind: RuleKind
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    supporting_event_ids: list[str] = Field(default_factory=list, max_length=64)
    rationale: str | None = Field(default=None, max_length=2000)

    @field_validator("supporting_event_ids", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        if isinstance(value, str | int):
            value = [value]
        if isinstance(value, list):
            return list(dict.fromkeys(_alias(v) for v in value if isinstance(v, str | int)))
        return value

    @field_validator("text")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())


class LLMVerdict(BaseModel):
    """The judge's verdict on one interaction."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)

    id: str
    verdict: Literal["good", "bad", "unsure"]
    confidence: float = Field(ge=0.0, le=1.0)
    reason: str | None = Field(default=None, max_length=1000)

    @field_validator("verdict", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("id", mode="before")
    @classmethod
    def _str_id(cls, value: object) -> object:
        return str(value).strip().upper() if isinstance(value, str | int) else value


def extract_json(content: str | None) -> Any:
    """The JSON value in a reply: bare, in a code fence, or wrapped in a sentence."""
    if content is None or not content.strip():
        raise MalformedOutput("empty answer")
    text = content.strip()
    candidates = [text]
    fenced = _FENCE_RE.match(text)
    if fenced:
        candidates.append(fenced.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    error = ""
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError as exc:
            error = error or f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    raise MalformedOutput(f"not valid JSON ({error})")


def _list_field(content: str | None, key: str) -> list[Any]:
    value = extract_json(content)
    if isinstance(value, dict) and isinstance(value.get(key), list):
        return list(value[key])
    if isinstance(value, list):
        return value
    raise MalformedOutput(f'expected a JSON object with a "{key}" list')


def parse_rules(content: str | None) -> list[Any]:
    """The raw ``rules`` list of a reply (each entry still to be validated)."""
    return _list_field(content, "rules")


def parse_verdicts(content: str | None) -> list[Any]:
    """The raw ``verdicts`` list of a judge's reply."""
    return _list_field(content, "verdicts")


def validation_summary(exc: ValidationError, limit: int = 3) -> str:
    """Where and why validation failed, without echoing the (possibly personal) input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def boundary_for(key: str) -> str:
    """A data-block boundary derived from ``key`` (stable for a replayed trigger)."""
    return "DATA-" + sha256(f"learnloop-boundary\x1f{key}".encode()).hexdigest()[:16]


def data_lines(rows: Iterable[Mapping[str, Any]], boundary: str) -> str:
    """Rows as JSON lines, with any copy of the boundary taken out of the data."""
    lines = []
    for row in rows:
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
        lines.append(line.replace(boundary, "DATA"))
    return "\n".join(lines) if lines else "(none)"


def digest(*parts: str) -> str:
    """The key offline synthesis uses for an example or correction (same id for both)."""
    joined = "\x1f".join(" ".join(normalise(p).split()) for p in parts)
    return blake2b(joined.encode("utf-8"), digest_size=12).hexdigest()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def redacted_evidence(evidence: Mapping[str, Any], redact: Callable[[str], str]) -> Evidence:
    """A copy with every free-text field redacted."""
    out = dict(evidence)
    for name in ("query", "response"):
        if isinstance(out.get(name), str):
            out[name] = redact(out[name])
    payload = dict(out.get("payload") or {})
    for name in ("text", "original", "edited", "query", "response", "error", "arguments"):
        if isinstance(payload.get(name), str):
            payload[name] = redact(payload[name])
    if isinstance(payload.get("tool_calls"), list):
        calls = []
        for call in payload["tool_calls"]:
            call = dict(call) if isinstance(call, dict) else {}
            for name in ("error", "arguments"):
                if isinstance(call.get(name), str):
                    call[name] = redact(call[name])
            calls.append(call)
        payload["tool_calls"] = calls
    out["payload"] = payload
    out["flags"] = [str(f) for f in out.get("flags") or []]
    return out


def tool_calls(evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tool calls an interaction or tool_call event carries."""
    payload = evidence.get("payload") or {}
    if evidence.get("type") == "tool_call":
        return [payload] if isinstance(payload, dict) else []
    calls = payload.get("tool_calls") if isinstance(payload, dict) else None
    return [c for c in calls or [] if isinstance(c, dict)]


def feedback_text(evidence: Mapping[str, Any]) -> str:
    """What the evidence itself says (explanation, edit, tool errors): what can support a rule."""
    payload = evidence.get("payload") or {}
    kind = evidence.get("type")
    if kind == "explanation":
        return str(payload.get("text") or "")
    if kind == "edit":
        return f"{payload.get('original') or ''}\n{payload.get('edited') or ''}"
    if kind in ("interaction", "tool_call"):
        parts = []
        for call in tool_calls(evidence):
            parts += [str(call.get(k) or "") for k in ("name", "status", "error", "arguments")]
        return "\n".join(p for p in parts if p)
    return ""


def all_text(evidence: Mapping[str, Any]) -> str:
    """Every free text of the evidence, for the injection check."""
    parts = [str(evidence.get("query") or ""), str(evidence.get("response") or "")]
    return "\n".join([*parts, feedback_text(evidence)])


def polarity(evidence: Mapping[str, Any]) -> int | None:
    """+1 for the rated response, -1 against it, None when the signal says neither."""
    found = signal_polarity(str(evidence.get("type") or ""), evidence.get("payload"))
    return found if isinstance(found, int) else None


def meaningful_tokens(text: str) -> frozenset[str]:
    """Stemmed content words that name things (not frame words like "use" or "answer")."""
    return frozenset(t for t in content_tokens(text) if t not in GENERIC and len(t) > 1)


def lexical_support(
    text: str, cited: Sequence[Evidence], min_coverage: float = MIN_COVERAGE
) -> list[Evidence]:
    """The cited evidence that says something like ``text``; empty if it is not supported.

    Each piece counts only if its own feedback text shares a content word with the
    rule, and together they must cover ``min_coverage`` of the rule's content words:
    a rule the model made up, or padded with citations of unrelated feedback from
    other users, does not pass. Deliberately lexical and conservative: a paraphrase
    with no word in common with its evidence is dropped too.
    """
    wanted = meaningful_tokens(text)
    if not wanted:
        return []
    kept: list[Evidence] = []
    covered: set[str] = set()
    for evidence in cited:
        shared = meaningful_tokens(feedback_text(evidence)) & wanted
        if shared:
            kept.append(evidence)
            covered |= shared
    if len(covered) / len(wanted) < min_coverage:
        return []
    return kept


def evidence_view(
    evidence: Mapping[str, Any], alias: str, user: str, max_chars: int = MAX_FIELD_CHARS
) -> dict[str, Any]:
    """What the model sees of one (already redacted) piece of evidence."""
    view: dict[str, Any] = {"id": alias, "type": str(evidence.get("type", "")), "user": user}
    for name in ("query", "response"):
        value = evidence.get(name)
        if isinstance(value, str) and value.strip():
            view[name] = _truncate(value, max_chars)
    payload = evidence.get("payload") or {}
    kind = view["type"]
    if kind == "explanation":
        view["text"] = _truncate(str(payload.get("text") or ""), max_chars)
    elif kind == "edit":
        view["original"] = _truncate(str(payload.get("original") or ""), max_chars)
        view["edited"] = _truncate(str(payload.get("edited") or ""), max_chars)
    elif kind == "rating":
        if payload.get("value") in (1, -1):
            view["rating"] = int(payload["value"])
        elif payload.get("score") is not None and payload.get("scale"):
            view["rating"] = f"{payload['score']}/{payload['scale']}"
        if payload.get("derived_by"):
            view["derived_by"] = str(payload["derived_by"])  # a machine's guess, not a person's
    elif kind == "engagement":
        view["engagement"] = str(payload.get("kind"))
        view["value"] = payload.get("value")
    elif kind in ("interaction", "tool_call"):
        calls = []
        for call in tool_calls(evidence):
            entry = {"name": str(call.get("name") or ""), "status": str(call.get("status") or "")}
            if call.get("error"):
                entry["error"] = _truncate(str(call["error"]), max_chars // 4)
            if call.get("arguments"):
                entry["arguments"] = _truncate(str(call["arguments"]), MAX_ARGUMENT_CHARS)
            calls.append(entry)
        view["tool_calls"] = calls
    flags = evidence.get("flags") or []
    if flags:
        view["flags"] = [str(f) for f in flags]
    return view


@dataclass(slots=True)
class PreparedEvidence:
    """The evidence as sent (views), by alias, and what was held back with reasons."""

    views: list[dict[str, Any]] = field(default_factory=list)
    by_alias: dict[str, Evidence] = field(default_factory=dict)
    withheld: list[dict[str, Any]] = field(default_factory=list)


def prepare_evidence(
    evidence: Iterable[Mapping[str, Any]],
    redact: Callable[[str], str],
    max_chars: int = MAX_FIELD_CHARS,
) -> PreparedEvidence:
    """Deduplicate, order, redact, hold back injection attempts, and alias what is left.

    Order is (timestamp, event id), so a replayed trigger gets the same aliases and
    the same prompt.
    """
    prepared = PreparedEvidence()
    users: dict[str, str] = {}
    seen: set[str] = set()
    ordered = sorted(
        evidence, key=lambda e: (int(e.get("timestamp") or 0), str(e.get("event_id", "")))
    )
    for raw in ordered:
        event_id = str(raw.get("event_id", ""))
        if not event_id or event_id in seen:
            continue
        seen.add(event_id)
        reason = injection_reason(all_text(raw))
        if reason is not None:
            prepared.withheld.append(skip(dict(raw), "possible_injection", reason))
            continue
        clean = redacted_evidence(raw, redact)
        alias = f"E{len(prepared.by_alias) + 1}"
        user = users.setdefault(str(raw.get("user_id", "")), f"u{len(users) + 1}")
        prepared.by_alias[alias] = clean
        prepared.views.append(evidence_view(clean, alias, user, max_chars))
    return prepared
