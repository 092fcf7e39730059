"""Splitting replies at platform limits: sentence ends, never inside a code block."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.text import split_message


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


# ----- Japanese rules (issue 14) ---------------------------------------------------------------

import regex  # noqa: E402

from bot.core.text import KINSOKU_START  # noqa: E402

FENCE = regex.compile(r"^[ \t]*`{3,}[^`\n]*$", regex.M)


def test_a_long_code_block_is_cut_between_lines_with_its_indentation_and_info_string() -> None:
    lines = [f"    value_{i} = compute({i})  # 説明 {i}" for i in range(200)]
    code = "  ```py\n" + "\n".join(lines) + "\n  ```"
    text = "前置きです。\n" + code + "\n後書きです。"
    parts = split_message(text, 500)
    assert len(parts) > 3 and all(len(p) <= 500 for p in parts)
    seen: list[str] = []
    for part in parts:
        fences = FENCE.findall(part)
        assert len(fences) % 2 == 0, part
        seen += [line for line in part.split("\n") if line.startswith("    value_")]
    assert seen == lines  # every code line whole, indentation kept, none lost or doubled
    middle = [p for p in parts if "value_" in p and "前置き" not in p and "後書き" not in p]
    assert middle and all(p.startswith("  ```py\n") and p.endswith("\n  ```") for p in middle)


def test_closing_brackets_go_with_the_sentence() -> None:
    text = "「" + "あ" * 30 + "。」" + "い" * 30 + "。"
    parts = split_message(text, 40)
    assert parts[0].endswith("。」") and parts[1][0] not in KINSOKU_START


@pytest.mark.parametrize("text", [
    "ああああああああああああああああ 」いいいいいいいいいいいいい",  # a space before a closer
    "ああああああああああああああ\n」いいいいいいいいいいいいいいい",  # a line break before one
    "abc def ghi jkl mno , pqr stu vwx",  # a space before a comma
])
def test_no_part_starts_with_a_closer_after_a_space_or_line_break(text: str) -> None:
    parts = split_message(text, 20)
    assert len(parts) == 2 and all(len(p) <= 20 for p in parts)
    assert parts[1][0] not in KINSOKU_START, parts
    assert "".join("".join(parts).split()) == "".join(text.split())


def test_an_ascii_question_mark_inside_a_url_is_not_a_sentence_end() -> None:
    text = "検索はこちらです https://example.com/search?q=" + "a" * 40 + " をご覧ください。"
    parts = split_message(text, 60)
    assert not any(p.endswith("search?") for p in parts)
    assert any("search?q=" in p for p in parts)


def test_a_long_sentence_with_only_commas_is_cut_after_a_comma() -> None:
    text = "、".join(["とても長い文章の一部分"] * 12) + "。"
    parts = split_message(text, 50)
    assert all(p.endswith(("、", "。")) for p in parts)
    assert "".join(parts) == text


@pytest.mark.parametrize("cluster", ["👨\u200d👩\u200d👧", "か\u3099", "🇯🇵", "❤\ufe0f",
                                     "👍🏽"])
def test_a_hard_cut_never_breaks_a_grapheme_cluster(cluster: str) -> None:
    text = "あ" + cluster * 60
    parts = split_message(text, 17)
    assert "".join(parts) == text
    for part in parts:
        assert set(regex.findall(r"\X", part)) <= {"あ", cluster}


CLUSTERS = ["あ", "い", "漢", "字", "カ", "か\u3099", "👨\u200d👩\u200d👧", "🇯🇵", "❤\ufe0f",
            "、", "。", "」", "「", "！", "？", "?", "!", " ", "\n", "a", "b", "/", "=", "）"]


@st.composite
def japanese_text_with_code(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Random Japanese prose, emoji and balanced ``` code blocks; returns the code lines too."""
    chunks, code_lines = [], []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            chunks.append("".join(draw(st.lists(st.sampled_from(CLUSTERS), max_size=400))))
        else:
            indent = draw(st.sampled_from(["", "  "]))
            info = draw(st.sampled_from(["", "py", "javascript"]))
            lines = draw(st.lists(
                st.builds(lambda pad, body: pad + body, st.sampled_from(["", "    ", "\t"]),
                          st.text(st.sampled_from(list("xy=() 12#あ🇯🇵")), min_size=1, max_size=30)
                          .map(str.strip).filter(lambda s: s and not s.startswith("`"))),
                min_size=1, max_size=40))
            code_lines += lines
            chunks.append(f"\n{indent}```{info}\n" + "\n".join(lines) + f"\n{indent}```\n")
    return "".join(chunks), code_lines


def _without_fences(text: str) -> str:
    return "".join(FENCE.sub("", text).split())


@settings(max_examples=200, deadline=None)
@given(japanese_text_with_code(), st.integers(min_value=60, max_value=400))
def test_split_properties_over_random_japanese_emoji_and_code(
        drawn: tuple[str, list[str]], limit: int) -> None:
    text, code_lines = drawn
    parts = split_message(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    # the joined parts are the original, outside the whitespace at cuts and the added fences
    assert _without_fences("\n".join(parts)) == _without_fences(text)
    clusters = set(regex.findall(r"\X", text))
    for part in parts:
        assert len(FENCE.findall(part)) % 2 == 0  # fences balanced in every part
        assert set(regex.findall(r"\X", part)) - {"`", "\n", " "} <= clusters  # no cluster cut
    lines_out = [line for part in parts for line in part.split("\n")]
    for line in code_lines:  # every code line intact, indentation included
        assert line in lines_out
    for first, second in zip(parts, parts[1:], strict=False):
        after_code = FENCE.match(first.rsplit("\n", 1)[-1]) is not None
        if not after_code and not FENCE.match(second) and not re.search(r"[」）。、！？?!]{8}", text):
            assert second[0] not in KINSOKU_START, (first[-20:], second[:20])


@pytest.mark.parametrize("unit", [".", "。", "?", "、", " ", "`", "\n"])
def test_adversarial_input_splits_in_linear_time(unit: str) -> None:
    """100,000 characters built to make a backtracking pattern quadratic: measured in
    milliseconds; the bound is generous (a quadratic pattern takes minutes here)."""
    import time

    text = unit * 100_000 + "x"
    started = time.perf_counter()
    parts = split_message(text, 2000)
    assert time.perf_counter() - started < 5.0
    assert all(len(p) <= 2000 for p in parts)


MARKS = ["\u0301", "\u0308", "\u3099", "\u20dd", "\ufe0f", "\u200d"]


@settings(max_examples=100, deadline=None)
@given(st.text(st.sampled_from(list("あいう漢字abc")), max_size=50),
       st.sampled_from(["a", "か", "👍"]),
       st.lists(st.sampled_from(MARKS), min_size=1, max_size=6).map("".join),
       st.text(st.sampled_from(list("えお字xy")), max_size=50),
       st.integers(min_value=16, max_value=400), st.floats(min_value=1.0, max_value=6.0))
def test_a_cluster_longer_than_the_limit_is_cut_at_code_points_into_full_parts(
        head: str, base: str, pattern: str, tail: str, limit: int, times: float) -> None:
    length = int(limit * times) + 1  # the cluster is always longer than a part
    marks = (pattern * length)[:length]
    text = head + base + marks + tail
    parts = split_message(text, limit)
    assert "".join(parts) == text  # no whitespace anywhere: nothing lost at the cuts
    assert all(0 < len(p) <= limit for p in parts)
    # a cut at the head's end and one at the cluster's end at most, otherwise full parts
    assert len(parts) <= -(-len(text) // limit) + 2


def test_the_reviewed_case_is_three_parts_not_two_thousand() -> None:
    text = "a" + "\u0301" * 4000  # one grapheme cluster of 4,001 code points
    assert [len(p) for p in split_message(text, 2000)] == [2000, 2000, 1]
