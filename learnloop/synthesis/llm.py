"""LLM synthesis: a trigger's evidence to candidate memory items through a chat model.

Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LiteLLM...)
by base URL and model name. The model only proposes; every proposal is checked
here against the evidence with the same policy as offline synthesis, because the
model's word is not enough:

- evidence is redacted and aliased before it is sent (no personal data, no user
  ids, no producer ids reach the endpoint), and evidence that reads as
  instructions is not sent at all (skipped as ``possible_injection``);
- the prompt puts evidence in a delimited data block and says it holds no
  instructions; prompts are versioned files (``prompts/v1/...``) and the version
  is recorded in each item's provenance;
- a returned item is dropped into ``skipped`` when it reads as an injection, cites
  no evidence that was sent, is not supported by what its cited evidence says,
  or (``rule``/``tool_rule``) is backed by fewer distinct users or less capped
  support than the scope's policy asks; examples and corrections must cite the
  ratings or edits they stand for, and take their query/response from them;
- a refusal gives no items (``refused``); unusable JSON gets one repair request,
  then ``malformed_output``;
- a request that cannot be served now raises :class:`SynthesisUnavailable`: the
  caller keeps the trigger and asks again later.

Unlike the offline synthesizer this one is async (it waits on the network);
``synthesize`` must be awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
from pydantic import SecretStr, ValidationError

from learnloop import metrics
from learnloop.synthesis.client import ChatClient, ChatReply
from learnloop.synthesis.errors import SynthesisUnavailable
from learnloop.synthesis.parsing import (
    MIN_COVERAGE,
    RULES_SCHEMA,
    Evidence,
    LLMRule,
    MalformedOutput,
    PreparedEvidence,
    boundary_for,
    data_lines,
    digest,
    lexical_support,
    parse_rules,
    polarity,
    prepare_evidence,
    validation_summary,
)
from learnloop.synthesis.templates import PromptSet, load_prompts
from processors.aggregate import Trigger
from processors.memory import ItemKind, MemoryItem
from processors.policy import LearningPolicy, ScopePolicy
from processors.ratings import is_implicit
from processors.redact import redactor
from processors.synthesis.base import (
    KIND_ORDER,
    SynthesisResult,
    last_support_ms,
    new_item,
    provenance,
    skip,
)
from processors.synthesis.guard import injection_reason
from processors.synthesis.offline import (
    ENGAGEMENT_WEIGHT,
    MIN_ENGAGEMENT_SIGNALS,
    capped_support,
    example_too_narrow,
)
from processors.synthesis.text import rule_key

log = structlog.get_logger(__name__)

METRIC_LABEL: Final = "llm"
MAX_REPAIR_ECHO: Final = 4000
CURRENT_KINDS: Final = frozenset({"rule", "tool_rule"})


class AsyncSynthesizer(Protocol):
    """The async twin of ``processors.synthesis.Synthesizer`` (for network-bound ones)."""

    name: str
    prompt_version: str | None

    async def synthesize(
        self, trigger: Trigger, current: Sequence[MemoryItem], now_ms: int
    ) -> SynthesisResult: ...


@dataclass(slots=True)
class _Candidate:
    kind: ItemKind
    key: str
    text: str
    evidence: list[Evidence]
    strength: float
    support: int
    extra: dict[str, Any] = field(default_factory=dict)


def _skip_output(
    kind: str, event_ids: Sequence[str], reason: str, detail: str = ""
) -> dict[str, Any]:
    """A ``skipped`` entry for an item the model proposed and we dropped (no text: may be PII)."""
    return {
        "event_id": event_ids[0] if event_ids else "",
        "type": f"llm:{kind}",
        "reason": reason,
        "detail": detail,
        "event_ids": list(event_ids),
    }


class LLMSynthesizer:
    """Synthesis through an OpenAI-compatible chat model, checked like offline synthesis."""

    name = METRIC_LABEL
    records_metrics = True  # SYNTHESIS_REQUESTS/SECONDS are counted here, not by the caller

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 4,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
        price_per_1k_prompt: float = 0.0,
        price_per_1k_completion: float = 0.0,
        prompt_version: str = "v1",
        redact_patterns: Sequence[str] = (),
        policy_for_scope: Callable[[str], ScopePolicy] | None = None,
        max_rules: int = 20,
        max_current_rules: int = 40,
        max_output_tokens: int | None = None,
        temperature: float | None = 0.0,
        min_coverage: float = MIN_COVERAGE,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 20.0,
        max_retry_after_s: float = 60.0,
        max_total_s: float = 300.0,
        client: ChatClient | None = None,
    ) -> None:
        self.model = model
        self.prompt_version: str | None = prompt_version
        self.prompts: PromptSet = load_prompts(prompt_version)  # a bad version stops start-up
        self.policy_for_scope = policy_for_scope or LearningPolicy().for_scope
        self.max_rules = max_rules
        self.max_current_rules = max_current_rules
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.min_coverage = min_coverage
        self._redact = redactor(tuple(redact_patterns))
        self.client = client or ChatClient(
            base_url,
            model,
            api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            breaker_threshold=breaker_threshold,
            breaker_reset_s=breaker_reset_s,
            price_per_1k_prompt=price_per_1k_prompt,
            price_per_1k_completion=price_per_1k_completion,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s,
            max_total_s=max_total_s,
            metric_label=METRIC_LABEL,
        )

    @property
    def synthesizer_id(self) -> str:
        """What provenance records as the synthesizer: ``llm:<model>``."""
        return f"llm:{self.model}"

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> LLMSynthesizer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- entry point ---------------------------------------------------------------

    async def synthesize(
        self, trigger: Trigger, current: Sequence[MemoryItem], now_ms: int
    ) -> SynthesisResult:
        """Candidate items for ``trigger``; raises :class:`SynthesisUnavailable` to retry later."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result, outcome = await self._synthesize(trigger, current, now_ms)
            return result
        except SynthesisUnavailable as exc:
            outcome = "unavailable"
            log.warning(
                "llm synthesis unavailable",
                group=trigger["group"],
                trigger_id=trigger["trigger_id"],
                reason=exc.reason,
                retry_after_s=exc.retry_after_s,
            )
            raise
        finally:
            metrics.SYNTHESIS_REQUESTS.labels(METRIC_LABEL, outcome).inc()
            metrics.SYNTHESIS_SECONDS.labels(METRIC_LABEL).observe(time.perf_counter() - started)

    async def _synthesize(
        self, trigger: Trigger, current: Sequence[MemoryItem], now_ms: int
    ) -> tuple[SynthesisResult, str]:
        policy = self.policy_for_scope(trigger["scope"])
        prepared = prepare_evidence(trigger["evidence"], self._redact)
        skipped = list(prepared.withheld)
        if not prepared.by_alias:
            return {"items": [], "skipped": skipped}, "no_evidence"
        messages = self._messages(trigger, current, prepared, policy)
        reply = await self._complete(messages)
        raw_rules: list[Any] | None = None
        for attempt in range(2):
            if reply.refused:
                detail = "content_filter" if reply.finish_reason == "content_filter" else "refusal"
                skipped += [skip(e, "refused", detail) for e in prepared.by_alias.values()]
                log.info("llm refused", group=trigger["group"], trigger_id=trigger["trigger_id"])
                return {"items": [], "skipped": skipped}, "refused"
            try:
                raw_rules = parse_rules(reply.content)
                break
            except MalformedOutput as exc:
                log.info(
                    "llm output malformed",
                    group=trigger["group"],
                    trigger_id=trigger["trigger_id"],
                    attempt=attempt + 1,
                    error=str(exc),
                )
                if attempt == 1:
                    skipped += [
                        skip(e, "malformed_output", str(exc)) for e in prepared.by_alias.values()
                    ]
                    return {"items": [], "skipped": skipped}, "malformed_output"
                repair = [
                    *messages,
                    {"role": "assistant", "content": (reply.content or "")[:MAX_REPAIR_ECHO]},
                    {"role": "user", "content": self.prompts.render("repair", error=str(exc))},
                ]
                reply = await self._complete(repair)
        assert raw_rules is not None
        items = self._check(trigger, policy, prepared, raw_rules, current, now_ms, skipped)
        log.info(
            "llm synthesis",
            group=trigger["group"],
            trigger_id=trigger["trigger_id"],
            proposed=len(raw_rules),
            kept=len(items),
            skipped=len(skipped),
        )
        return {"items": items, "skipped": skipped}, "ok"

    async def _complete(self, messages: list[dict[str, str]]) -> ChatReply:
        return await self.client.complete(
            messages,
            schema_name="learnloop_memory_items",
            schema=RULES_SCHEMA,
            temperature=self.temperature,
            max_tokens=self.max_output_tokens,
        )

    # -- the prompt ----------------------------------------------------------------

    def _messages(
        self,
        trigger: Trigger,
        current: Sequence[MemoryItem],
        prepared: PreparedEvidence,
        policy: ScopePolicy,
    ) -> list[dict[str, str]]:
        boundary = boundary_for(trigger["trigger_id"])
        rules = sorted(
            (
                i
                for i in current
                if i["kind"] in CURRENT_KINDS and i["status"] in ("active", "proposed")
            ),
            key=lambda i: (-i["strength"], i["item_id"]),
        )[: self.max_current_rules]
        current_rows = [{"kind": i["kind"], "text": self._redact(i["text"])} for i in rules]
        scope = trigger["scope"]
        # a user group's id names the user: the model needs the scope, not the person
        group = "one user's own group" if scope == "user" else self._redact(trigger["group"])
        user = self.prompts.render(
            "user",
            group=group,
            scope=scope,
            reason=self._redact(trigger["reason"]),
            min_users=policy.min_users,
            max_rules=self.max_rules,
            boundary=boundary,
            current=data_lines(current_rows, boundary),
            evidence=data_lines(prepared.views, boundary),
        )
        return [
            {"role": "system", "content": self.prompts.render("system")},
            {"role": "user", "content": user},
        ]

    # -- post-validation -----------------------------------------------------------

    def _check(
        self,
        trigger: Trigger,
        policy: ScopePolicy,
        prepared: PreparedEvidence,
        raw_rules: list[Any],
        current: Sequence[MemoryItem],
        now_ms: int,
        skipped: list[dict[str, Any]],
    ) -> list[MemoryItem]:
        candidates: dict[str, _Candidate] = {}
        for index, raw in enumerate(raw_rules):
            kind = str(raw.get("kind", "?"))[:32] if isinstance(raw, dict) else "?"
            if index >= self.max_rules:
                skipped.append(_skip_output(kind, [], "too_many", f"more than {self.max_rules}"))
                continue
            try:
                rule = LLMRule.model_validate(raw)
            except ValidationError as exc:
                skipped.append(_skip_output(kind, [], "invalid_output", validation_summary(exc)))
                continue
            cited = [
                prepared.by_alias[a] for a in rule.supporting_event_ids if a in prepared.by_alias
            ]
            cited_ids = [str(e["event_id"]) for e in cited]
            text = self._redact(rule.text)
            reason = injection_reason(text)
            if reason is not None:
                skipped.append(_skip_output(rule.kind, cited_ids, "possible_injection", reason))
                continue
            if not cited:
                detail = "cites no evidence that was sent"
                skipped.append(_skip_output(rule.kind, cited_ids, "unsupported", detail))
                continue
            found = self._candidate(rule.kind, text, cited, policy)
            if isinstance(found, tuple):
                skipped.append(_skip_output(rule.kind, cited_ids, *found))
                continue
            item_key = f"{found.kind}\x1f{found.key}"
            if item_key in candidates:  # the same item twice: one item, both supports
                same = candidates[item_key]
                known = {str(e["event_id"]) for e in same.evidence}
                same.evidence += [e for e in found.evidence if str(e["event_id"]) not in known]
                same.strength = max(same.strength, found.strength)
                same.support = max(same.support, found.support)
                continue
            candidates[item_key] = found
        rejected = {i["item_id"] for i in current if i["status"] == "rejected"}
        items: list[MemoryItem] = []
        used: set[str] = set()
        for candidate in candidates.values():
            item = new_item(
                trigger,
                candidate.kind,
                candidate.key,
                candidate.text,
                strength=candidate.strength,
                support=candidate.support,
                now_ms=now_ms,
                prov=provenance(
                    candidate.evidence,
                    synthesizer=self.synthesizer_id,
                    prompt_version=self.prompt_version,
                    derived_by="llm",
                    trigger=trigger,
                ),
                supported_ms=last_support_ms(candidate.evidence, now_ms),
            )
            ids = [str(e["event_id"]) for e in candidate.evidence]
            if item["item_id"] in rejected:
                skipped.append(
                    _skip_output(candidate.kind, ids, "previously_rejected", item["item_id"])
                )
                continue
            item.update(candidate.extra)  # type: ignore[typeddict-item]
            items.append(item)
            used.update(ids)
        skipped += [
            skip(e, "not_used", "no kept item cites it")
            for e in prepared.by_alias.values()
            if str(e["event_id"]) not in used
        ]
        items.sort(key=lambda i: (KIND_ORDER[i["kind"]], i["item_id"]))
        return items

    def _candidate(
        self, kind: ItemKind, text: str, cited: list[Evidence], policy: ScopePolicy
    ) -> _Candidate | tuple[str, str]:
        """The item a checked proposal becomes, or ``(reason, detail)`` for dropping it."""
        if kind in ("rule", "tool_rule"):
            supporting = lexical_support(text, cited, self.min_coverage)
            if not supporting:
                return "unsupported", "its cited evidence does not say this"
            support, users = capped_support(supporting, policy)
            if users < policy.min_users or support < policy.min_evidence:
                return "insufficient_support", (
                    f"{users} user(s), support {support:g}; the scope needs "
                    f"{policy.min_users} user(s) and support {policy.min_evidence}"
                )
            return _Candidate(kind, rule_key(text), text, supporting, support, int(support))
        if kind == "correction":
            edits = [
                e
                for e in cited
                if e.get("type") == "edit"
                and isinstance(e["payload"].get("original"), str)
                and isinstance(e["payload"].get("edited"), str)
            ]
            supporting = lexical_support(text, edits, self.min_coverage)
            if not supporting:
                return "unsupported", "a correction must cite the edit it describes"
            source = supporting[0]["payload"]
            key = digest(source["original"], source["edited"])
            group = [
                e
                for e in supporting
                if digest(e["payload"]["original"], e["payload"]["edited"]) == key
            ]
            support, _ = capped_support(group, policy)
            query = supporting[0].get("query")
            extra = {
                "query": query if isinstance(query, str) else None,
                "response": source["original"],
                "corrected": source["edited"],
            }
            return _Candidate(kind, key, text, group, support, len(group), extra)
        sign = 1 if kind == "preferred_example" else -1
        rated = [
            e
            for e in cited
            if e.get("type") in ("rating", "engagement")
            and polarity(e) == sign
            and isinstance(e.get("response"), str)
            and e["response"].strip()
        ]
        if not rated:
            return "unsupported", "an example must cite ratings of its response in that direction"
        query = rated[0].get("query") if isinstance(rated[0].get("query"), str) else ""
        response = str(rated[0]["response"])
        key = digest(str(query), response)
        group = [e for e in rated if digest(str(e.get("query") or ""), str(e["response"])) == key]
        narrow = example_too_narrow(group, policy)
        if narrow is not None:
            return "insufficient_support", narrow
        explicit = sum(1 for e in group if not is_implicit(e))
        implicit = len(group) - explicit
        if not explicit and implicit < MIN_ENGAGEMENT_SIGNALS:
            detail = f"{implicit} implicit signal(s); needs {MIN_ENGAGEMENT_SIGNALS}"
            return "engagement_not_aggregated", detail
        strength = explicit + ENGAGEMENT_WEIGHT * implicit
        extra = {"query": query or None, "response": response}
        return _Candidate(kind, key, text, group, strength, len(group), extra)
