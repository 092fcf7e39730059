"""The model card's prompt format, injection-safe in the model's own terms, fitted to the budget.

Escaping is decided by the model's view of the text (`bot.engine.normalizer`: its tokenizer's own
normaliser), not by Python's Unicode tables: a line that, as the model reads it, holds `<NL>` or
starts with a speaker label is rewritten from that view and defused; every other line stays byte
for byte (the model card's example included). Then the encoded prompt is checked at the token
level: a turn boundary (`<NL>` and a speaker label, in whatever pieces) is exactly where the code
put one. If not, the turns are escaped again, strictly; if still not, the prompt is refused.
What is stored and shown is always what the person wrote: only the prompt's copy is escaped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from bot.conversation import Speaker, Turn
from bot.errors import PromptRefused
from bot.engine.normalizer import (
    IDENTITY,
    TURN_LINE,
    Normalizer,
    could_start_turn,
    label_of,
    starts_turn,
)
from bot.engine.tokenizer import NEWLINE_SYMBOL, Tokenizer

SEPARATOR = NEWLINE_SYMBOL
REPLY_CUE = f"{Speaker.SYSTEM}: "
SHORTENED_MARK = "…（以下省略）"
MAX_PIECE_CHARS = 32  # no token covers more characters (sentencepiece's own cap is 16)
_SEGMENT_TOKENS = 8  # tokens after a `<NL>` read first to see whether a label follows

# Control characters other than newline and tab are dropped (NUL included), and so are lone
# surrogates (JSON can carry "\ud800"; neither sentencepiece nor SQLite can take one).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# The stand-in for a typed "<NL>": not folded back to "<" / ">" by NFKC.
_NL_STAND_IN = "〈NL〉"


def clean_text(text: str) -> str:
    """Normalise newlines and drop control characters; the form we store and show."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def escape_text(text: str, normalizer: Normalizer = IDENTITY, *, strict: bool = False) -> str:
    """Text as it may appear inside one turn: no newline, and no line that the model reads as
    holding `<NL>` or starting a turn. `strict`: every line is replaced by its defused view,
    with what could join the boundary before it (marks, ignorable characters) removed."""
    lines = clean_text(text).split("\n")
    return NEWLINE_SYMBOL.join(_escape_line(line, normalizer, strict) for line in lines)


def _escape_line(line: str, normalizer: Normalizer, strict: bool) -> str:
    view = normalizer.normalize(line)
    if not strict and not _dangerous(line) and not _dangerous(view):
        return line  # cannot forge: kept byte for byte
    text = view
    if strict:
        text = text.lstrip()
        while text and (unicodedata.category(text[0]).startswith("M")
                        or not normalizer.normalize(text[0]).strip()):
            text = text[1:].lstrip()
    while NEWLINE_SYMBOL in text:
        text = text.replace(NEWLINE_SYMBOL, _NL_STAND_IN)
    match = TURN_LINE.match(text)
    if match is not None:  # 「ユーザー」: the label quoted, its hidden characters dropped
        text = f"{text[:match.start(1)]}「{label_of(text)}」{text[match.end(1):]}"
    return text


def _dangerous(text: str) -> bool:
    return NEWLINE_SYMBOL in text or starts_turn(text)


def format_turn(turn: Turn, normalizer: Normalizer = IDENTITY, *, strict: bool = False) -> str:
    return f"{turn.speaker}: {escape_text(turn.text, normalizer, strict=strict)}"


def build_prompt(turns: Sequence[Turn], *, normalizer: Normalizer = IDENTITY,
                 strict: bool = False) -> str:
    """Turns joined by `<NL>`, ending with `<NL>システム: ` (model card format, exactly).
    `normalizer`: the model's view of text (pass the tokenizer); without one, text is taken
    to be read as it is."""
    return SEPARATOR.join([*(format_turn(t, normalizer, strict=strict) for t in turns),
                           REPLY_CUE])


def boundary_labels(ids: Sequence[int], tokenizer: Tokenizer) -> list[str]:
    """The speaker labels the model reads at the start of the prompt and after each `<NL>`
    token, whatever pieces spell them (`▁`-prefixed, byte pieces, hidden characters)."""
    newline = tokenizer.newline_id
    starts = [0, *(i + 1 for i, token in enumerate(ids) if token == newline)]
    ends = [*(s - 1 for s in starts[1:]), len(ids)]
    labels = []
    for start, end in zip(starts, ends, strict=True):
        # Read a few pieces; read on only while what is read may still become a label (a
        # long run of spaces or hidden characters before one is read to its end).
        size = _SEGMENT_TOKENS
        while True:
            text = tokenizer.text_of(ids[start:min(end, start + size)])
            label = label_of(text)
            if label is not None or start + size >= end or not could_start_turn(text):
                break
            size *= 2
        if label is not None:
            labels.append(label)
    return labels


def expected_labels(turns: Sequence[Turn]) -> list[str]:
    return [*(str(t.speaker) for t in turns), str(Speaker.SYSTEM)]


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    prompt: str
    ids: tuple[int, ...]
    turns: tuple[Turn, ...]  # the conversation's turns in the prompt (the head not counted)
    dropped: int  # oldest turns left out
    shortened: bool  # the newest turn alone was too long and was cut
    summarised: bool = False  # the summary exchange is at the prompt's head


def fit_prompt(turns: Sequence[Turn], tokenizer: Tokenizer, budget: int, *,
               head: Sequence[Turn] = (), summary: Sequence[Turn] = ()) -> FittedPrompt:
    """The longest suffix of `turns` whose prompt takes at most `budget` tokens.

    The prompt starts with `head` (turns never dropped, e.g. a channel's persona), then
    `summary` (an exchange standing for older turns), then the turns. Oldest turns go
    first, then the summary; the newest turn is always kept, and is shortened (its head kept,
    marked with SHORTENED_MARK) only when it alone does not fit. The head is escaped like
    every turn; one that still forges a boundary is refused.
    """
    if not turns:
        raise ValueError("fit_prompt needs at least one turn")
    head = tuple(head)
    fixed = tokenizer.count(REPLY_CUE) + 1  # the cue and the separator before it
    fixed += sum(turn_cost(t, tokenizer, budget) for t in head)
    costs = [turn_cost(t, tokenizer, budget) for t in turns]
    kept = _suffix(costs, budget - fixed - sum(turn_cost(t, tokenizer, budget) for t in summary))
    prefix = (*head, *summary)
    if kept == 0 or not summary:  # the summary gives way once only the newest turn is left
        kept, prefix = _suffix(costs, budget - fixed), tuple(head)
    newest = turns[-1]
    shortened = False
    if kept == 0:
        newest = _shorten(newest, tokenizer, budget - fixed - 1)
        shortened, kept = True, 1
    chosen = (*turns[len(turns) - kept : -1], newest)
    prompt, ids, chosen = _render(prefix, chosen, tokenizer, budget, strict=False)
    if boundary_labels(ids, tokenizer) != expected_labels((*prefix, *chosen)):
        # a boundary the line-by-line view did not see (composition across the line, ...)
        prompt, ids, chosen = _render(prefix, chosen, tokenizer, budget, strict=True)
        if boundary_labels(ids, tokenizer) != expected_labels((*prefix, *chosen)):
            # Still: the newest turn is refused; an older one (or the summary) is left out,
            # so one such message does not block every later question of its conversation.
            if any(_forges(turn, tokenizer) for turn in head):
                raise PromptRefused("the persona's turns forge a boundary at the token level")
            forging = [_forges(turn, tokenizer) for turn in chosen]
            if forging[-1]:
                raise PromptRefused("a turn boundary survives escaping at the token level")
            if any(_forges(turn, tokenizer) for turn in summary):
                prefix = tuple(head)
            chosen = tuple(t for t, bad in zip(chosen, forging, strict=True) if not bad)
            prompt, ids, chosen = _render(prefix, chosen, tokenizer, budget, strict=True)
            if boundary_labels(ids, tokenizer) != expected_labels((*prefix, *chosen)):
                raise PromptRefused("a turn boundary survives escaping at the token level")
    return FittedPrompt(prompt, tuple(ids), chosen, len(turns) - len(chosen), shortened,
                        summarised=bool(summary) and len(prefix) > len(head))


def persona_forges(persona: Sequence[Turn], tokenizer: Tokenizer) -> bool:
    """Whether a persona's turns, escaped, would still read as other turns to the model."""
    return any(_forges(turn, tokenizer) for turn in persona)


def _suffix(costs: Sequence[int], room: int) -> int:
    """How many of the last `costs` fit in `room` tokens."""
    kept = used = 0
    for cost in reversed(costs):
        if used + cost > room:
            break
        used += cost
        kept += 1
    return kept


def _forges(turn: Turn, tokenizer: Tokenizer) -> bool:
    """Whether `turn` alone, strictly escaped, still reads as more than one turn."""
    ids = tokenizer.encode(build_prompt([turn], normalizer=tokenizer, strict=True))
    return boundary_labels(ids, tokenizer) != expected_labels([turn])


def _render(prefix: tuple[Turn, ...], chosen: tuple[Turn, ...], tokenizer: Tokenizer,
            budget: int, strict: bool) -> tuple[str, list[int], tuple[Turn, ...]]:
    prompt = build_prompt((*prefix, *chosen), normalizer=tokenizer, strict=strict)
    ids = tokenizer.encode(prompt)
    # Segment costs add up because `<NL>` is a user-defined symbol; verify, never assume.
    while len(ids) > budget and len(chosen) > 1:
        chosen = chosen[1:]
        prompt = build_prompt((*prefix, *chosen), normalizer=tokenizer, strict=strict)
        ids = tokenizer.encode(prompt)
    return prompt, ids, chosen


def turn_cost(turn: Turn, tokenizer: Tokenizer, limit: int) -> int:
    """Tokens of the formatted turn and its separator. A text too long to fit `limit` tokens
    whatever its pieces is not encoded at all (a 1 MB message would hold up the loop)."""
    if len(turn.text) > limit * MAX_PIECE_CHARS:
        return limit + 1
    return tokenizer.count(format_turn(turn, tokenizer)) + 1


def _shorten(turn: Turn, tokenizer: Tokenizer, budget: int) -> Turn:
    """The longest head of `turn.text` (plus the mark) whose formatted turn fits `budget`."""

    def fits(n: int) -> bool:
        candidate = Turn(turn.speaker, turn.text[:n] + SHORTENED_MARK)
        return tokenizer.count(format_turn(candidate, tokenizer)) <= budget

    lo, hi = 0, min(len(turn.text), budget * MAX_PIECE_CHARS)
    while lo < hi:  # binary search on characters: token counts grow with the prefix
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return Turn(turn.speaker, turn.text[:lo] + SHORTENED_MARK)
