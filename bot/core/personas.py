"""Personas in the model's own format. The model has no system role: a persona is a short
opening exchange (ユーザー then システム, one or more times) put at the head of every prompt of
its scope, counted in the token budget and never dropped to fit (bot/core/prompt.py `fit_prompt`).
Its turns are escaped like every turn, so a persona cannot forge a turn boundary either.

A persona setting is the name of a ready persona, or an admin's own text: either lines that
start with `ユーザー:` / `システム:` (the exchange, written out), or a plain instruction, which
becomes the ユーザー turn answered by 「はい、分かりました。」.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.conversation import Speaker, Turn
from bot.errors import SettingRefused

ACKNOWLEDGED = "はい、分かりました。"
_LABELS = {f"{Speaker.USER}:": Speaker.USER, f"{Speaker.SYSTEM}:": Speaker.SYSTEM,
           f"{Speaker.USER}：": Speaker.USER, f"{Speaker.SYSTEM}：": Speaker.SYSTEM}

# Where a written-out turn starts: the text's start, or blanks / a newline before a label.
_TURN_START = re.compile(r"(?:^|\s+)(?=(?:ユーザー|システム)[:：])")


@dataclass(frozen=True, slots=True)
class Persona:
    name: str  # a ready persona's name, or "custom"
    turns: tuple[Turn, ...]  # ユーザー, システム, ... ; empty: no persona

    @property
    def chars(self) -> int:
        return sum(len(turn.text) for turn in self.turns)


def _exchange(instruction: str, answer: str) -> tuple[Turn, ...]:
    return (Turn(Speaker.USER, instruction), Turn(Speaker.SYSTEM, answer))


NONE = Persona("none", ())
READY: dict[str, Persona] = {
    persona.name: persona for persona in (
        NONE,
        Persona("helpful", _exchange(
            "あなたは親切で役に立つアシスタントです。質問には正確に、分かりやすく答えてください。",
            "はい、分かりました。何でも聞いてください。")),
        Persona("concise", _exchange(
            "これからの質問には、要点だけを一、二文で簡潔に答えてください。",
            "はい。簡潔に答えます。")),
        Persona("keigo", _exchange(
            "これからは丁寧な敬語で、落ち着いた言葉づかいで答えてください。",
            "かしこまりました。丁寧な言葉でお答えいたします。")),
        Persona("casual", _exchange(
            "これからは友だちと話すみたいに、くだけた口調で気軽に答えてね。",
            "うん、わかった！気軽に話そう。")),
    )
}


def parse_persona(text: str, max_chars: int) -> Persona:
    """A persona setting's value: a ready persona's name, or an admin's own text (see the
    module's doc). Refused (SettingRefused, in Japanese) when longer than `max_chars` in all,
    or when written-out turns do not alternate from ユーザー to システム."""
    value = text.strip()
    if value.lower() in READY:
        return READY[value.lower()]
    turns = _written_turns(value) if _starts_with_label(value) else _exchange(value, ACKNOWLEDGED)
    persona = Persona("custom", turns)
    if not value or persona.chars > max_chars:
        raise SettingRefused(f"ペルソナは{max_chars}文字以内で書いてください。")
    return persona


def _starts_with_label(text: str) -> bool:
    return any(text.startswith(label) for label in _LABELS)


def _written_turns(text: str) -> tuple[Turn, ...]:
    """`ユーザー: …` / `システム: …` turns, each label at the start or after a blank or a
    newline (Discord's command options are one line: `ユーザー: … システム: …`)."""
    turns: list[Turn] = []
    for piece in _TURN_START.split(text):
        if not piece.strip():
            continue
        label = next(label for label in _LABELS if piece.startswith(label))
        turns.append(Turn(_LABELS[label], piece[len(label):].strip()))
    expected = [Speaker.USER if i % 2 == 0 else Speaker.SYSTEM for i in range(len(turns))]
    if [t.speaker for t in turns] != expected or len(turns) % 2 or any(
            not t.text for t in turns):
        raise SettingRefused("ペルソナは「ユーザー:」と「システム:」の行を交互に、"
                             "ユーザーから始めてシステムで終えてください。")
    return tuple(turns)
