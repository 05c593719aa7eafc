"""Pure pieces of the export: rating verdicts, query keys, and one JSONL row per example.

Every function here is deterministic and touches no I/O, so the unit tests pin the
exact shapes that TRL's trainers and the OpenAI fine-tuning API read:

============  =====================================  ===========================================
format        ``messages`` (TRL conversational)      ``prompt_completion`` (TRL standard)
============  =====================================  ===========================================
``sft``       ``{"messages": [user, assistant]}``    ``{"prompt", "completion"}``
``dpo``       ``{"prompt": [user], "chosen":         ``{"prompt", "chosen", "rejected"}``
              [assistant], "rejected": [assistant]}``
``kto``       ``{"prompt": [user], "completion":     ``{"prompt", "completion", "label"}``
              [assistant], "label": bool}``
============  =====================================  ===========================================

The ``openai`` layout is the chat form for ``sft`` (the OpenAI supervised format is
``messages``) and OpenAI's preference fine-tuning form for ``dpo``
(``{"input": {"messages"}, "preferred_output", "non_preferred_output"}``); OpenAI has
no unpaired (KTO) format, so ``kto`` with ``openai`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Final, Literal

from learnloop.errors import LearnloopError
from processors.embedding import content_tokens, words
from processors.ratings import GOOD_SCORE, POOR_SCORE, fraction_polarity, rating_fraction

Format = Literal["sft", "dpo", "kto"]
Layout = Literal["messages", "prompt_completion", "openai"]
FORMATS: Final[tuple[Format, ...]] = ("sft", "dpo", "kto")
LAYOUTS: Final[tuple[Layout, ...]] = ("messages", "prompt_completion", "openai")

#: a rating at or above this share of its scale is an up vote ("highly rated")
HIGH_SCORE: Final = GOOD_SCORE
#: a rating at or below this share of its scale is a down vote; in between is neutral
LOW_SCORE: Final = POOR_SCORE
#: cosine of two queries' HashingEmbedder vectors at which they count as the same question
SIMILAR_QUERY: Final = 0.8
#: LSH bands per query (each the pair of minimum hashes under two seeds)
BANDS: Final = 6

Row = dict[str, Any]


class ExportError(LearnloopError, ValueError):
    """Arguments the export cannot honour (an unknown format, KTO in the OpenAI layout...)."""


def check_options(fmt: str, layout: str, min_agreement: float) -> None:
    """Raise :class:`ExportError` for a format/layout pair or agreement no trainer can use."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if layout not in LAYOUTS:
        raise ExportError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if fmt == "kto" and layout == "openai":
        raise ExportError("OpenAI fine-tuning has no unpaired (KTO) format; use messages")
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"min_agreement must be between 0 and 1, got {min_agreement}")


# --- ratings ---------------------------------------------------------------------------


def rating_score(value: int | None, score: float | None, scale: float | None) -> float | None:
    """A rating as a share of its scale in [0, 1]: thumbs up 1.0, thumbs down 0.0."""
    return rating_fraction(value, score, scale)


def vote(score: float) -> int:
    """+1 for a high rating (>= 0.8 of the scale), -1 for a low one (<= 0.4), 0 between.

    The thresholds are ``processors.ratings``', shared with aggregation and synthesis.
    """
    return fraction_polarity(score)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the ratings of one response say: ``label`` +1, -1 or 0 (unusable, see ``reason``)."""

    label: int
    agreement: float
    reason: str | None = None


def verdict(ups: int, downs: int, total: int, min_agreement: float) -> Verdict:
    """Majority vote of ``total`` ratings, of which ``ups`` high and ``downs`` low.

    ``agreement`` is the share of all ratings that voted with the majority
    (neutral ratings count against it); a single decisive rating agrees with itself.
    """
    if total <= 0 or (ups == 0 and downs == 0):
        return Verdict(0, 0.0, "neutral_rating")
    if ups == downs:
        return Verdict(0, ups / total, "ratings_disagree")
    label = 1 if ups > downs else -1
    agreement = max(ups, downs) / total
    if agreement < min_agreement:
        return Verdict(0, agreement, "ratings_disagree")
    return Verdict(label, agreement)


# --- queries ---------------------------------------------------------------------------


def normalise_query(text: str) -> str:
    """Lower-case words only, so case, punctuation and spacing do not split a question."""
    return " ".join(words(text, synonyms=False))


def _digest(text: str) -> str:
    return blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _hashes(token: str) -> tuple[int, ...]:
    """``2 * BANDS`` independent 32-bit hashes of one token, from one blake2b digest."""
    digest = blake2b(token.encode("utf-8"), digest_size=8 * BANDS).digest()
    return tuple(int.from_bytes(digest[i : i + 4], "big") for i in range(0, 8 * BANDS, 4))


def query_bands(text: str) -> list[str]:
    """Bucket keys of a query: its exact normalised form, then MinHash LSH bands.

    Two queries that share any key are compared; ones with the same normalised
    text always share the first. A band is the minimum hash of the content words
    under two seeds, so queries with word-set Jaccard 0.7 share a band with
    probability ~0.98 and unrelated ones rarely do.
    """
    keys = ["q:" + _digest(normalise_query(text))]
    hashed = [_hashes(t) for t in set(content_tokens(text))]
    if not hashed:
        return keys
    minima = [min(column) for column in zip(*hashed, strict=True)]
    keys.extend(f"b{band}:{minima[2 * band]:x}.{minima[2 * band + 1]:x}" for band in range(BANDS))
    return keys


# --- rows ------------------------------------------------------------------------------


def clean(text: str | None, redact: Callable[[str], str]) -> str:
    """Text as written to a dataset: personal data redacted, outer whitespace stripped."""
    if not text:
        return ""
    return redact(text).strip()


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_row(prompt: str, completion: str, layout: Layout) -> Row:
    """One supervised example: the user's query and the response to learn."""
    if layout == "prompt_completion":
        return {"prompt": prompt, "completion": completion}
    return {"messages": _user(prompt) + _assistant(completion)}


def dpo_row(prompt: str, chosen: str, rejected: str, layout: Layout) -> Row:
    """One preference pair: the same prompt with a better and a worse response."""
    if layout == "prompt_completion":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if layout == "openai":
        return {
            "input": {"messages": _user(prompt)},
            "preferred_output": _assistant(chosen),
            "non_preferred_output": _assistant(rejected),
        }
    return {"prompt": _user(prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)}


def kto_row(prompt: str, completion: str, label: bool, layout: Layout) -> Row:
    """One unpaired example: a response and whether it was desirable."""
    if layout == "openai":
        raise ExportError("OpenAI fine-tuning has no unpaired (KTO) format; use messages")
    if layout == "prompt_completion":
        return {"prompt": prompt, "completion": completion, "label": label}
    return {"prompt": _user(prompt), "completion": _assistant(completion), "label": label}
