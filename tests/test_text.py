"""Splitting replies at platform limits: sentence ends, never inside a code block."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.text import split_message


def test_short_text_is_one_piece() -> None:
    assert split_message("こんにちは。", 2000) == ["こんにちは。"]


def test_cuts_fall_at_sentence_ends() -> None:
    text = "これは文です。" * 600
    pieces = split_message(text, 2000)
    assert all(len(p) <= 2000 for p in pieces) and len(pieces) == 3
    assert all(p.endswith("。") for p in pieces)
    assert "".join(pieces) == text


def test_never_cuts_inside_a_code_block_that_fits() -> None:
    code = "```python\n" + "x = 1\n" * 100 + "```"
    text = "前置きの文です。" * 200 + "\n" + code + "\n後書き。"
    pieces = split_message(text, 2000)
    assert all(p.count("```") % 2 == 0 for p in pieces)
    assert any(code in p for p in pieces)


def test_a_code_block_too_long_for_one_message_is_closed_and_reopened() -> None:
    code = "```python\n" + "print('hello')\n" * 300 + "```"
    pieces = split_message(code, 2000)
    assert len(pieces) > 1 and all(len(p) <= 2000 for p in pieces)
    assert all(p.count("```") == 2 for p in pieces)
    assert all(p.startswith("```python") for p in pieces)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("あい。！？!?\n `x")), max_size=3000),
       st.integers(min_value=16, max_value=500))
def test_pieces_fit_and_lose_no_visible_text(text: str, limit: int) -> None:
    pieces = split_message(text, limit)
    assert all(0 < len(p) <= limit for p in pieces)
    squeeze = lambda s: "".join(s.replace("```", "").split())  # noqa: E731
    assert squeeze("".join(pieces)) == squeeze(text)
