"""Cutting kept text to a byte budget: never past it, never inside a character."""

from __future__ import annotations

from processors.clip import ELLIPSIS, FLOOR_BYTES, _clip, clip, clip_strings


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


def test_the_quick_fit_check_never_skips_a_cut_the_walk_would_make() -> None:
    """Values just under, at and over the limits give what walking them gives."""
    values: list[object] = []
    for n in (10, 60, 61, 62, 63, 64, 65, 70):
        values += [{"t": "x" * n}, {"t": "é" * (n // 2)}, ["\n" * n], {"a": "x" * n, "b": "y" * n}]
        values.append({"calls": [{"arguments": "z" * n, "status": "ok"}] * 3})
    values.append({1: "x" * 100})  # not JSON (a non-string key): walked
    values.append({"s": {"set"}, "t": "x" * 100})
    for value in values:
        for budget in (None, 64, 100, 130):
            walked = _clip(value, 64, [budget if budget is not None else -1])
            assert clip_strings(value, 64, budget) == walked, (value, budget)
