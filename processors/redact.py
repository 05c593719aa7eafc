"""Personal data and secrets out of feedback text before it reaches an LLM or the store.

Feedback is free text typed by people and pasted from terminals, so it carries
e-mail addresses, phone numbers, card numbers, IBANs and credentials. Each kind is
replaced by a typed placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``,
``[SECRET]``; ``[REDACTED]`` for configured patterns) so the text still reads
naturally. Patterns are compiled once; numbers are validated (Luhn, IBAN mod-97)
so versions, dates and ids are not mangled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Final

EMAIL: Final = "[EMAIL]"
PHONE: Final = "[PHONE]"
CARD: Final = "[CARD]"
IBAN: Final = "[IBAN]"
SECRET: Final = "[SECRET]"  # noqa: S105 - the placeholder, not a secret
REDACTED: Final = "[REDACTED]"
PLACEHOLDERS: Final = (EMAIL, PHONE, CARD, IBAN, SECRET, REDACTED)

_EMAIL_RE: Final = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
# key=value credentials: keep the key so the sentence still makes sense
_ASSIGNED_RE: Final = re.compile(
    r"(?i)\b((?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|password|passwd|pwd"
    r"|token|auth[_-]?token|access[_-]?token|refresh[_-]?token|private[_-]?key)"
    r"\s*[:=]\s*)(['\"]?)[^\s'\"]{4,}\2"
)
_BEARER_RE: Final = re.compile(
    r"(?i)\b(bearer|basic)\s+(?=[A-Za-z0-9\-._~+/]*\d|[A-Za-z0-9\-._~+/]{20})[A-Za-z0-9\-._~+/]{8,}=*"
)
_TOKEN_RES: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(p)
    for p in (
        r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}",  # JWT
        r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}",  # OpenAI/Anthropic style
        r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}",  # Stripe
        r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
        r"\bgithub_pat_[A-Za-z0-9_]{20,}",
        r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",  # AWS access key ids
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
        r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
        r"\bnpm_[A-Za-z0-9]{36}",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        r"\b[0-9a-fA-F]{32,}\b",  # long hex: API keys, signing secrets (and, yes, sha1/sha256)
    )
)
_BASE64ISH_RE: Final = re.compile(r"(?<![\w/+-])[A-Za-z0-9+/_-]{32,}={0,2}(?![\w/+-])")
_IBAN_RE: Final = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD_RE: Final = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w.-]|-\d)")
_PHONE_RE: Final = re.compile(
    r"(?<![\w.:/-])(?:\+|00)?(?:\d[\s.\-]?)?(?:\(\d{1,5}\)[\s.\-]?)?\d{2,5}(?:[\s.\-]?\d{2,5}){1,4}"
    r"(?![\w:/]|\.\d)"
)
_DATE_RE: Final = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_DOTTED_RE: Final = re.compile(r"^\d{1,3}(?:\.\d{1,3}){2,3}$")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616 mod-97 check, so a random capitalised word plus digits is not an IBAN."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    # issuers' numbers start with 2-6 (Mastercard 2-series and 5, Amex 3, Visa 4, Discover 6)
    plausible = 13 <= len(digits) <= 19 and digits[0] in "23456"
    return CARD if plausible and luhn_ok(digits) else match.group(0)


def _iban(match: re.Match[str]) -> str:
    return IBAN if iban_ok(match.group(0)) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    stripped = text.strip()
    if _DATE_RE.match(stripped) or _DOTTED_RE.match(stripped):
        return text  # dates, IP addresses and version numbers are not phone numbers
    international = stripped.startswith(("+", "00", "("))
    separated = bool(re.search(r"[\s.\-()]", stripped))
    if international and 7 <= len(digits) <= 15:
        return PHONE
    if separated and 8 <= len(digits) <= 15:
        return PHONE
    if not separated and 10 <= len(digits) <= 15:
        return PHONE
    return text


def _base64ish(match: re.Match[str]) -> str:
    text = match.group(0)
    classes = sum(
        (
            any(c.islower() for c in text),
            any(c.isupper() for c in text),
            any(c.isdigit() for c in text),
        )
    )
    # a random credential mixes cases and digits; a long identifier or path does not
    return SECRET if classes == 3 and sum(c.isdigit() for c in text) >= 3 else text


_MEMO_SIZE = 16_384


class Redactor:
    """Built-in patterns plus configured ones, compiled once."""

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        self.extra = tuple(re.compile(p) for p in extra_patterns)
        steps: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
            (_ASSIGNED_RE, lambda m: m.group(1) + SECRET),
            (_BEARER_RE, lambda m: m.group(1) + " " + SECRET),
        ]
        steps += [(pattern, SECRET) for pattern in _TOKEN_RES]
        steps += [
            (_EMAIL_RE, EMAIL),
            (_BASE64ISH_RE, _base64ish),
            (_IBAN_RE, _iban),
            (_CARD_RE, _card),
            (_PHONE_RE, _phone),
        ]
        self.steps = tuple(steps)
        # a group's pending evidence is redacted again at each of its triggers
        self._seen: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        """``text`` with every match replaced by its placeholder."""
        done = self._seen.get(text)
        if done is not None:
            return done
        original = text
        for pattern in self.extra:
            text = pattern.sub(REDACTED, text)
        for pattern, replacement in self.steps:
            text = pattern.sub(replacement, text)
        if len(self._seen) >= _MEMO_SIZE:
            self._seen.clear()
        self._seen[original] = text
        return text


@lru_cache(maxsize=64)
def redactor(extra_patterns: tuple[str, ...] = ()) -> Redactor:
    """A shared :class:`Redactor` per pattern set (compiling is the costly part)."""
    return Redactor(extra_patterns)


def redact(text: str, extra_patterns: Sequence[str] = ()) -> str:
    """Replace personal data and secrets in ``text`` with typed placeholders."""
    if not text:
        return text
    return redactor(tuple(extra_patterns))(text)
