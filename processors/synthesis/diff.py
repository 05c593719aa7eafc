"""What a user's edit says: the explanation derived from the word diff of an edit.

When a user rewrites the agent's output, the difference is the feedback. A word-level
diff (difflib) names what was removed, added or reworded, so the correction item can
say "Prefer 'pnpm install' over 'npm install'" instead of storing two blobs. A single
repeated rewording is a *clear substitution*, strong enough to become a rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Final

MAX_PHRASE_WORDS: Final = 8
MAX_PARTS: Final = 3
MAX_SUBSTITUTION_WORDS: Final = 4
MAX_INSERTION_WORDS: Final = 12
_LEADING_GLUE: Final = frozenset({"and", "or", "also", "plus", "with", "then", ",", ";", "-"})
_TOKEN_RE: Final = re.compile(r"\w+(?:[-'./:@]\w+)*|[^\w\s]")


@dataclass(frozen=True, slots=True)
class EditDiff:
    """The explanation of one edit and, when it is one rewording, that substitution."""

    explanation: str
    substitution: tuple[str, str] | None  # (old phrase, new phrase)
    kept_ratio: float  # share of the original's words the edit kept
    changes: int
    # the phrase an edit only inserted (one place, no other change), without a leading
    # conjunction or article: "a local experiences tour" from "… and a local experiences tour"
    insertion: str | None = None


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def _phrase(tokens: list[str], limit: int = MAX_PHRASE_WORDS) -> str:
    text = ""
    for piece in tokens:
        punct = len(piece) == 1 and not piece.isalnum() and piece not in "([{\"'"
        glue = not text or punct
        text += piece if glue else " " + piece
    words = text.split()
    if len(words) > limit:
        text = " ".join(words[:limit]) + "\u2026"
    return text.replace("'", "\u2019")


def _is_words(tokens: list[str]) -> bool:
    return any(t[0].isalnum() for t in tokens)


def _one_rewording(replaced: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The one rewording behind every replacement, if there is one: "v1" -> "v2" explains
    both "v1 client" -> "v2 client" and "billing.v1" -> "billing.v2"."""
    for old, new in sorted(replaced, key=lambda pair: (len(pair[0]), pair[0].lower())):
        if len(old.split()) > MAX_SUBSTITUTION_WORDS or len(new.split()) > MAX_SUBSTITUTION_WORDS:
            continue
        whole = re.compile(r"(?<![A-Za-z0-9])" + re.escape(old.lower()) + r"(?![A-Za-z0-9])")
        swap = new.lower().replace("\\", "\\\\")
        if all(
            whole.search(a.lower()) and whole.sub(swap, a.lower()) == b.lower() for a, b in replaced
        ):
            return (old, new)
    return None


def describe_edit(original: str, edited: str) -> EditDiff:
    """Explain ``original`` -> ``edited`` from the words that changed."""
    a, b = _tokens(original), _tokens(edited)
    matcher = SequenceMatcher(None, [t.lower() for t in a], [t.lower() for t in b], autojunk=False)
    ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    kept = sum(size for _, _, size in matcher.get_matching_blocks())
    kept_ratio = kept / len(a) if a else 0.0
    if not ops:
        same_words = original.split() == edited.split()
        note = "Whitespace only" if same_words else "Capitalisation only"
        return EditDiff(f"{note} changed.", None, kept_ratio, 0)
    if not a or kept_ratio < 0.3:
        return EditDiff(
            f"Rewritten almost entirely (kept {round(100 * kept_ratio)}% of the original wording).",
            None,
            kept_ratio,
            len(ops),
        )
    word_ops = [op for op in ops if _is_words(a[op[1] : op[2]]) or _is_words(b[op[3] : op[4]])]
    if not word_ops:
        return EditDiff("Punctuation changed.", None, kept_ratio, len(ops))
    substitution: tuple[str, str] | None = None
    if all(op[0] == "replace" for op in word_ops):
        substitution = _one_rewording(
            [(_phrase(a[i1:i2]), _phrase(b[j1:j2])) for _, i1, i2, j1, j2 in word_ops]
        )
    insertion: str | None = None
    if len(word_ops) == 1 and word_ops[0][0] == "insert":
        _, _, _, j1, j2 = word_ops[0]
        inserted = b[j1:j2]
        while inserted and inserted[0].lower() in _LEADING_GLUE:
            inserted = inserted[1:]
        if inserted and len(inserted) <= MAX_INSERTION_WORDS:
            insertion = _phrase(inserted, MAX_INSERTION_WORDS).rstrip(",;:.- ")
    # the largest changes first, then in reading order
    ranked = sorted(word_ops, key=lambda op: (-max(op[2] - op[1], op[4] - op[3]), op[1]))
    chosen = sorted(ranked[:MAX_PARTS], key=lambda op: op[1])
    parts: list[str] = []
    seen: set[str] = set()
    for tag, i1, i2, j1, j2 in chosen:
        old, new = _phrase(a[i1:i2]), _phrase(b[j1:j2])
        if tag == "replace":
            part = f"prefer '{new}' over '{old}'"
        elif tag == "delete":
            part = f"leave out '{old}'"
        else:
            part = f"add '{new}'"
        if part.lower() not in seen:
            seen.add(part.lower())
            parts.append(part)
    text = "; ".join(parts)
    more = len(word_ops) - len(chosen)
    if more > 0:
        text += f" (and {more} more change{'s' if more > 1 else ''})"
    return EditDiff(
        text[0].upper() + text[1:] + ".", substitution, kept_ratio, len(word_ops), insertion
    )
