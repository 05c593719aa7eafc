"""Redaction: every kind of personal data and secret is replaced, ordinary text is not."""

from __future__ import annotations

import pytest

from processors.redact import iban_ok, luhn_ok, redact

CASES = [
    ("mail alice.smith+eu@example.co.uk now", "alice.smith+eu@example.co.uk", "[EMAIL]"),
    ("call me on +49 30 1234567", "+49 30 1234567", "[PHONE]"),
    ("or (555) 123-4567 after six", "(555) 123-4567", "[PHONE]"),
    ("my cell is 555-123-4567", "555-123-4567", "[PHONE]"),
    ("card 4111 1111 1111 1111 was declined", "4111 1111 1111 1111", "[CARD]"),
    ("amex 378282246310005 works", "378282246310005", "[CARD]"),
    ("key sk-proj-abcdefghijklmnop1234 leaked", "sk-proj-abcdefghijklmnop1234", "[SECRET]"),
    (
        "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "[SECRET]",
    ),
    ("aws AKIAIOSFODNN7EXAMPLE in the log", "AKIAIOSFODNN7EXAMPLE", "[SECRET]"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9",
        "[SECRET]",
    ),
    ("Authorization: Bearer abc123def456ghi789", "abc123def456ghi789", "Bearer [SECRET]"),
    (
        "hmac 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ok",
        "9f86d081884c7d659a2feaa0c55ad015",
        "[SECRET]",
    ),
    (
        "blob dGhpc0lzQVNlY3JldEtleTEyMzQ1Njc4OTBhYmNkZWY= here",
        "dGhpc0lzQVNlY3JldEtleTEyMzQ1",
        "[SECRET]",
    ),
    ("set password=hunter2 in the env", "hunter2", "password=[SECRET]"),
    ("pay to DE89 3704 0044 0532 0130 00 today", "DE89 3704 0044 0532 0130 00", "[IBAN]"),
    ("or GB82WEST12345698765432", "GB82WEST12345698765432", "[IBAN]"),
]


@pytest.mark.parametrize(("text", "secret", "placeholder"), CASES)
def test_each_kind_is_replaced_by_its_placeholder(text: str, secret: str, placeholder: str) -> None:
    out = redact(text)
    assert secret not in out
    assert placeholder in out


@pytest.mark.parametrize(
    "text",
    [
        "use v2.3.1 of the API on 2024-01-31 at 10.0.0.1:8080",
        "the deploy tool failed in 4 of 6 calls after a 30 s timeout",
        "see services/billing/invoices/create_invoice_handler_v2.py line 120",
        "ticket 12345 asks for 1,000,000 rows and a basic understanding of SQL",
        "the token authentication failed; the password reset link expired",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_numbers_that_fail_their_checksum_are_not_cards_or_ibans() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert "[CARD]" not in redact("order 4111-1111-1111-1112 shipped")
    assert "[IBAN]" not in redact("code DE89370400440532013001")


def test_configured_patterns_are_redacted_too() -> None:
    text = "employee E12345 asked about project ZEBRA-7"
    out = redact(text, [r"\bE\d{5}\b", r"ZEBRA-\d+"])
    assert out == "employee [REDACTED] asked about project [REDACTED]"
    assert redact(text) == text  # not without the configuration
