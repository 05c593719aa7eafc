"""Cutting kept text to a byte budget: never past it, never inside a character."""

from __future__ import annotations

from processors.clip import ELLIPSIS, FLOOR_BYTES, clip, clip_strings


def test_short_text_is_kept_as_it_is() -> None:
    assert clip("use the v2 client", 64) == "use the v2 client"
    assert clip("", 16) == ""


def test_long_text_is_cut_to_the_budget_and_marked() -> None:
    cut = clip("x" * 5000, 1024)
    assert len(cut.encode()) <= 1024
    assert cut.endswith(ELLIPSIS)
    assert cut.startswith("x" * 1000)


def test_multibyte_text_is_cut_between_characters() -> None:
    text = "é€😀" * 400  # 2, 3 and 4 bytes
    cut = clip(text, 100)
    assert len(cut.encode()) <= 100
    assert text.startswith(cut[: -len(ELLIPSIS)])  # a prefix: no broken character


def test_nested_strings_are_cut_and_an_untouched_value_is_returned_itself() -> None:
    small = {"text": "fine", "calls": [{"name": "search", "status": "ok"}], "n": 3}
    assert clip_strings(small, 64) is small
    big = {"text": "y" * 500, "calls": [{"arguments": "z" * 500, "status": "ok"}], "n": 3}
    cut = clip_strings(big, 64)
    assert len(cut["text"].encode()) <= 64
    assert len(cut["calls"][0]["arguments"].encode()) <= 64
    assert cut["calls"][0]["status"] == "ok"
    assert cut["n"] == 3
    assert big["text"] == "y" * 500  # the input is not changed


def test_a_budget_bounds_many_strings_together() -> None:
    calls = [{"name": "run", "arguments": "a" * 1000, "status": "error"} for _ in range(64)]
    cut = clip_strings({"tool_calls": calls}, 1024, budget=3072)
    texts = [s for call in cut["tool_calls"] for s in call.values()]
    assert sum(len(s.encode()) for s in texts) <= 3072 + len(texts) * FLOOR_BYTES
    assert all(call["status"] == "error" for call in cut["tool_calls"])  # short ones survive
