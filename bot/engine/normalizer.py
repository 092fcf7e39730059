"""Where a turn starts, judged as the model reads text: through its tokenizer's own normaliser.

The model does not read the text Python holds but sentencepiece's normalised form of it: with
an `nmt_nfkc` rule it deletes some characters (U+008F, ...), folds others (`＜ＮＬ＞` -> `<NL>`,
`ｼｽﾃﾑ` -> `システム`, characters newer than Python's Unicode tables included) and composes
(`サ` + U+3099 -> `ザ`); `▁` (U+2581) is a space to it. So both the prompt builder (what goes in)
and the stop filter (what comes out) ask one small port, `Normalizer`, for the model's view of a
line, and judge that view with the one rule below. The project's `Tokenizer` implements the
port with `SentencePieceProcessor.normalize`; `IDENTITY` stands in where no tokenizer is at hand.
"""

from __future__ import annotations

from typing import Final, Protocol

import regex

from bot.conversation import Speaker

NEWLINE_SYMBOL: Final = "<NL>"
LABELS: Final = (str(Speaker.USER), str(Speaker.SYSTEM))
# Ignored in front of, inside and after a label when judging a line: whitespace (the model's
# `▁` included) and invisible format characters (U+200B, U+FEFF, ...).
_IGNORED = r"[\s\u2581\p{Cf}]"
_LABEL = "|".join("".join(f"{ch}{_IGNORED}*" for ch in label) for label in LABELS)
# A line that starts a turn: ignored characters, a speaker label (spelled with ignored
# characters in between), ignored characters, a colon.
TURN_LINE: Final = regex.compile(rf"{_IGNORED}*({_LABEL}){_IGNORED}*[:：]")
_IGNORABLE = regex.compile(rf"{_IGNORED}+")


class Normalizer(Protocol):
    """The model's view of a text: what its tokenizer reads instead of the text itself."""

    def normalize(self, text: str) -> str: ...


class _Identity:
    """A model that reads text as it is (sentencepiece's `identity` rule)."""

    def normalize(self, text: str) -> str:
        return text

    def __repr__(self) -> str:
        return "IDENTITY"


IDENTITY: Final[Normalizer] = _Identity()


def starts_turn(view: str) -> bool:
    """Whether a line, as the model reads it, begins with a speaker label and a colon."""
    return TURN_LINE.match(view) is not None


def could_start_turn(view: str) -> bool:
    """Whether a line, as the model reads it so far, may still become a turn start when more
    text follows (a proper prefix of one: `ユー`, ` システム `, ...)."""
    rest = _IGNORABLE.sub("", view)
    return any(label.startswith(rest) or rest == label for label in LABELS)


def strip_ignorable(view: str) -> str:
    return _IGNORABLE.sub("", view)


def label_of(view: str) -> str | None:
    """The speaker label a turn-starting line begins with (ignored characters removed)."""
    match = TURN_LINE.match(view)
    return None if match is None else _IGNORABLE.sub("", match.group(1))
