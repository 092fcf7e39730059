"""The model card's prompt format, injection-safe, fitted to the context budget."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import regex

from bot.conversation import Speaker, Turn
from bot.tokenizer import NEWLINE_SYMBOL, Tokenizer

SEPARATOR = NEWLINE_SYMBOL
REPLY_CUE = f"{Speaker.SYSTEM}: "
SHORTENED_MARK = "…（以下省略）"
MAX_PIECE_CHARS = 32  # no token covers more characters (sentencepiece's own cap is 16)

# A line of user text that looks like a speaker label ("システム: ", "ユーザー：", ...).
_FORGED_LABEL = re.compile(rf"(\s*)({Speaker.USER}|{Speaker.SYSTEM})(\s*[:：])")
# Invisible format characters (U+200B, U+200C, U+FEFF, ...): `\u200bシステム:` must not pass for
# an ordinary line, so a line is checked with them removed.
_FORMAT = regex.compile(r"\p{Cf}")
# Control characters other than newline and tab are dropped (NUL included), and so are lone
# surrogates (JSON can carry "\ud800"; neither sentencepiece nor SQLite can take one).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# The stand-in for a typed "<NL>": not folded back to "<" / ">" by NFKC.
_NL_STAND_IN = "〈NL〉"


def clean_text(text: str) -> str:
    """Normalise newlines and drop control characters; the form we store and show."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def escape_text(text: str, nfkc: bool = True) -> str:
    """Text as it may appear inside one turn: no newline, no typed `<NL>`, no forged label.

    `nfkc`: whether the model's tokenizer normalises with NFKC (`Tokenizer.nfkc`). If it does,
    NFKC comes first, or the tokenizer would turn `＜ＮＬ＞` into `<NL>` or `ｼｽﾃﾑ:` into `システム:`
    after the checks below. If it does not (`identity`), the text is left as the model saw such
    text in training (`本当？！`, `…`, `①`, full-width spaces) and `＜ＮＬ＞` is plain text."""
    text = clean_text(text)
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    while NEWLINE_SYMBOL in text:
        text = text.replace(NEWLINE_SYMBOL, _NL_STAND_IN)
    lines = text.split("\n")
    for i, line in enumerate(lines):
        probe = _FORMAT.sub("", line)
        if _FORGED_LABEL.match(probe):
            lines[i] = _FORGED_LABEL.sub(r"\1「\2」\3", probe, count=1)
    return NEWLINE_SYMBOL.join(lines)


def format_turn(turn: Turn, nfkc: bool = True) -> str:
    return f"{turn.speaker}: {escape_text(turn.text, nfkc)}"


def build_prompt(turns: Sequence[Turn], *, nfkc: bool = True) -> str:
    """Turns joined by `<NL>`, ending with `<NL>システム: ` (model card format, exactly).
    `nfkc`: whether the model's tokenizer normalises with NFKC (pass `tokenizer.nfkc`)."""
    return SEPARATOR.join([*(format_turn(t, nfkc) for t in turns), REPLY_CUE])


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    prompt: str
    ids: tuple[int, ...]
    turns: tuple[Turn, ...]
    dropped: int  # oldest turns left out
    shortened: bool  # the newest turn alone was too long and was cut


def fit_prompt(turns: Sequence[Turn], tokenizer: Tokenizer, budget: int) -> FittedPrompt:
    """The longest suffix of `turns` whose prompt takes at most `budget` tokens.

    Oldest turns go first; the newest turn is always kept, and is shortened (its head kept,
    marked with SHORTENED_MARK) only when it alone does not fit.
    """
    if not turns:
        raise ValueError("fit_prompt needs at least one turn")
    fixed = tokenizer.count(REPLY_CUE) + 1  # the cue and the separator before it
    costs = [turn_cost(t, tokenizer, budget) for t in turns]
    kept, used = 0, fixed
    for cost in reversed(costs):
        if used + cost > budget:
            break
        used += cost
        kept += 1
    newest = turns[-1]
    shortened = False
    if kept == 0:
        newest = _shorten(newest, tokenizer, budget - fixed - 1)
        shortened, kept = True, 1
    chosen = (*turns[len(turns) - kept : -1], newest)
    prompt = build_prompt(chosen, nfkc=tokenizer.nfkc)
    ids = tokenizer.encode(prompt)
    # Segment costs add up because `<NL>` is a user-defined symbol; verify, never assume.
    while len(ids) > budget and len(chosen) > 1:
        chosen = chosen[1:]
        prompt = build_prompt(chosen, nfkc=tokenizer.nfkc)
        ids = tokenizer.encode(prompt)
    return FittedPrompt(prompt, tuple(ids), chosen, len(turns) - len(chosen), shortened)


def turn_cost(turn: Turn, tokenizer: Tokenizer, limit: int) -> int:
    """Tokens of the formatted turn and its separator. A text too long to fit `limit` tokens
    whatever its pieces is not encoded at all (a 1 MB message would hold up the loop)."""
    if len(turn.text) > limit * MAX_PIECE_CHARS:
        return limit + 1
    return tokenizer.count(format_turn(turn, tokenizer.nfkc)) + 1


def _shorten(turn: Turn, tokenizer: Tokenizer, budget: int) -> Turn:
    """The longest head of `turn.text` (plus the mark) whose formatted turn fits `budget`."""

    def fits(n: int) -> bool:
        candidate = Turn(turn.speaker, turn.text[:n] + SHORTENED_MARK)
        return tokenizer.count(format_turn(candidate, tokenizer.nfkc)) <= budget

    lo, hi = 0, min(len(turn.text), budget * MAX_PIECE_CHARS)
    while lo < hi:  # binary search on characters: token counts grow with the prefix
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return Turn(turn.speaker, turn.text[:lo] + SHORTENED_MARK)
