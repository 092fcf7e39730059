"""The text-level stop filter: `<NL>` spelled in pieces, turn starts in every spelling, dangling
labels, and replies cut by the token limit ending at a sentence end or with 「…」."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.engine.stops import ELLIPSIS, StopFilter


def run(pieces: list[str], truncated: bool = False) -> tuple[list[str], StopFilter]:
    stop = StopFilter()
    shown = [stop.push(piece) for piece in pieces]
    shown.append(stop.flush(truncated=truncated))
    return shown, stop


def test_nl_spelled_with_ordinary_pieces_is_a_newline_even_across_deltas() -> None:
    shown, _ = run(["一行目<", "N", "L", ">二行目"])
    assert "".join(shown) == "一行目\n二行目"
    assert "<" not in "".join(shown[:3])  # the partial `<NL` was held back, never shown


def test_nl_spelled_in_pieces_followed_by_a_turn_stops_the_reply() -> None:
    shown, stop = run(["答えです。<NL", ">ユーザー: 次の質問"])
    assert "".join(shown) == "答えです。" and stop.stopped


@pytest.mark.parametrize("turn", ["\nユーザー：次", "\n ユーザー: 次", "\n\u3000システム ： 次",
                                  "\nシステム:次", "<NL>  ユーザー：次"])
def test_every_spelling_of_a_turn_start_stops_the_reply(turn: str) -> None:
    for cut in range(1, len(turn)):
        shown, stop = run(["答えです。", turn[:cut], turn[cut:]])
        assert "".join(shown) == "答えです。" and stop.stopped, (turn, cut)


def test_a_dangling_label_at_the_token_limit_is_trimmed() -> None:
    for truncated in (True, False):
        shown, _ = run(["答えです。", "\nユーザー"], truncated=truncated)
        assert "".join(shown) == "答えです。"


def test_a_newline_and_a_word_that_only_looks_like_a_label_are_kept() -> None:
    shown, stop = run(["一行目", "\n", "システ", "ムの話です。", "\n"])
    assert "".join(shown) == "一行目\nシステムの話です。\n" and not stop.stopped


def test_a_reply_cut_at_the_limit_ends_at_its_last_sentence_end() -> None:
    pieces = ["最初の文です。", "二つ目の文も", "ここで終わります。", "三つ目の文は途", "中で"]
    shown, _ = run(pieces, truncated=True)
    assert "".join(shown) == "最初の文です。二つ目の文もここで終わります。"
    assert "".join(run(pieces, truncated=False)[0]) == "".join(pieces)  # eos: all of it


def test_a_reply_cut_in_a_long_sentence_ends_with_an_ellipsis() -> None:
    shown, _ = run(["短い。", "とても長い二つ目の文がまだ続いていて、", "終わらない"], truncated=True)
    assert "".join(shown) == "短い。とても長い二つ目の文がまだ続いていて、終わらない" + ELLIPSIS
    shown, _ = run(["一文だけの長い答えが途中で"], truncated=True)
    assert "".join(shown) == "一文だけの長い答えが途中で" + ELLIPSIS


def test_closing_brackets_stay_with_their_sentence_when_trimming() -> None:
    shown, _ = run(["「はい。", "」と答えました。", "そして次に"], truncated=True)
    assert "".join(shown) == "「はい。」と答えました。"


# The filter's rule (bot/engine/normalizer.py) for these pieces: spaces count as nothing around a
# speaker label and inside it, within one line.
_SP = "[ \t\u3000]*"
_LABEL = "|".join(_SP.join(label) for label in ("ユーザー", "システム"))
TURN = re.compile(rf"\n{_SP}({_LABEL}){_SP}[:：]")


def reference(text: str) -> str:
    """What the whole reply shows when the model ends it itself (eos)."""
    text = text.replace("<NL>", "\n")
    match = TURN.search(text)
    if match:
        return text[: match.start()]
    return re.sub(rf"\n{_SP}({_LABEL}){_SP}\Z", "", text)


pieces_text = st.lists(st.sampled_from(
    ["<", "N", "L", ">", "<NL>", "\n", " ", "\u3000", "ユー", "ザー", "システム", "シス", ":", "：",
     "猫", "です", "。", "」", "？", "!", "、"]), max_size=40).map("".join)


def splits(text: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.integers(0, len(text)), max_size=8).map(
        lambda cuts: [text[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)],
                                                strict=True)])


@settings(max_examples=400, deadline=None)
@given(st.data(), pieces_text)
def test_any_delta_split_shows_the_same_reply(data: st.DataObject, text: str) -> None:
    pieces = data.draw(splits(text))
    shown, _ = run(pieces)
    assert "".join(shown) == reference(text)


@settings(max_examples=400, deadline=None)
@given(st.data(), pieces_text)
def test_a_cut_reply_is_a_head_of_the_reply_that_ends_cleanly(data: st.DataObject,
                                                              text: str) -> None:
    pieces = data.draw(splits(text))
    joined = "".join(run(pieces, truncated=True)[0])
    whole = reference(text)
    assert whole.startswith(joined.removesuffix(ELLIPSIS))
    assert "<NL>" not in joined and not TURN.search(joined)
    if joined.strip() and joined != whole:
        assert joined.endswith(ELLIPSIS) or re.search(r"[。？!」\n]\s*\Z", joined), joined


async def test_the_engine_marks_a_reply_cut_by_the_token_limit(generator) -> None:  # noqa: ANN001
    """The real tiny model writes gibberish that runs to the limit: each reply ends at a
    sentence end or with 「…」, and the stream still joins to exactly what was shown."""
    from bot.engine.sampling import GenerationParams

    for n in range(1, 4):
        prompt = f"ユーザー: {'猫は' * n}何ですか?<NL>システム: "
        deltas = [d async for d in generator.stream(
            prompt, GenerationParams(max_new_tokens=20 + n, do_sample=False))]
        text = "".join(deltas)
        assert text.strip()
        assert text.endswith(ELLIPSIS) or re.search(r"[。？！?!」）\n]\s*\Z", text), text


@pytest.mark.parametrize("unit", [".", "。", "\n ", "<N"])
def test_adversarial_replies_pass_the_filter_in_linear_time(unit: str) -> None:
    import time

    text = unit * 50_000 + "x"
    started = time.perf_counter()
    for truncated in (False, True):
        stop = StopFilter()
        "".join(stop.push(text[i:i + 7]) for i in range(0, len(text), 7)) + stop.flush(truncated)
    assert time.perf_counter() - started < 5.0


def test_a_cut_reply_never_ends_like_a_streaming_preview(tokenizer) -> None:  # noqa: ANN001
    """A reply cut by the token limit ends with 「…」 right after its last word: " …" is how a
    preview still streaming ends (bot/core/reply.py PREVIEW_TAIL), and the two must differ."""
    from bot.core.reply import PREVIEW_TAIL
    from bot.engine.stops import ReplyText

    for text in ["猫は とても かわいい ", "猫は とても かわいい", "猫は とても\n"]:
        reply = ReplyText(tokenizer.decoder(), tokenizer.eos_id)
        shown = [reply.feed(token) for token in tokenizer.encode(text)]
        shown.append(reply.finish())  # no eos: cut by the limit
        whole = "".join(shown)
        assert whole.endswith(ELLIPSIS) and not whole.endswith(PREVIEW_TAIL), whole
        assert whole.removesuffix(ELLIPSIS) == text.rstrip()
