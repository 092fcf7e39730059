"""What a community may set, within what bounds, and how scopes combine.

Keys (the names admins type): persona, enabled, mention_only, temperature, max_new_tokens,
repetition_penalty, window, buttons. The host's settings file gives every default and the hard
bounds, and says which keys communities may change at all (COMMUNITY_KEYS). Values are stored
as text; a stored value the host's bounds no longer allow (the host tightened them after it was
set) is skipped, so the wider scope decides: the host stays on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.errors import SettingRefused
from bot.engine.generation import GenerationParams
from bot.core.personas import READY, Persona, parse_persona
from bot.ports.community import KEYS, Level, Scope
# What admins may type for a key, in a few words (the refusal shows it).
_TRUE = {"on", "true", "yes", "1", "オン", "はい"}
_FALSE = {"off", "false", "no", "0", "オフ", "いいえ"}
MIN_WINDOW = 64


@dataclass(frozen=True, slots=True)
class Bounds:
    """The host's hard limits on what a community may set."""

    temperature: tuple[float, float] = (0.1, 1.5)
    repetition_penalty: tuple[float, float] = (1.0, 2.0)
    max_new_tokens: tuple[int, int] = (1, 512)
    window: tuple[int, int] = (MIN_WINDOW, 1920)  # prompt tokens
    persona_chars: int = 400
    changeable: frozenset[str] = frozenset(KEYS)


@dataclass(frozen=True, slots=True)
class Effective:
    """A conversation's settings once every scope is applied. `origins`: the level that set
    each key (HOST where nobody changed it)."""

    persona: Persona
    enabled: bool
    mention_only: bool
    temperature: float
    max_new_tokens: int
    repetition_penalty: float
    window: int  # most prompt tokens (persona included)
    buttons: bool  # 停止 / もう一度 / 👍👎 on answers
    context_tokens: int = 2048
    origins: Mapping[str, Level] = field(default_factory=dict, compare=False)

    def params(self, base: GenerationParams | None = None) -> GenerationParams:
        """The generator's sampling for this scope (seed and timeout kept from `base`)."""
        return replace(base or GenerationParams(), temperature=self.temperature,
                       max_new_tokens=self.max_new_tokens,
                       repetition_penalty=self.repetition_penalty)

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens: the window, and never more than the context leaves the answer."""
        return min(self.window, self.context_tokens - self.max_new_tokens)

    def shown(self, key: str) -> str:
        """One key's value as /status and the config commands show it."""
        value = getattr(self, key)
        if key == "persona":
            return value.name if value.name != "custom" else "custom: " + " / ".join(
                t.text for t in value.turns)
        if isinstance(value, bool):
            return "on" if value else "off"
        return str(value)


def parse_value(key: str, text: str, bounds: Bounds) -> Any:
    """An admin's text for `key` as its value, or SettingRefused (a short Japanese line)."""
    if key not in KEYS:
        raise SettingRefused(f"「{key[:40]}」という設定はありません。使える設定: {', '.join(KEYS)}")
    if key not in bounds.changeable:
        raise SettingRefused(f"{key} はこのボットの運営者が固定しているため変更できません。")
    text = text.strip()
    if key == "persona":
        return parse_persona(text, bounds.persona_chars)
    if key in ("enabled", "mention_only", "buttons"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SettingRefused(f"{key} は on か off で指定してください。")
    low, high = getattr(bounds, key)
    kind = float if isinstance(low, float) else int
    try:
        number = kind(text)
    except ValueError:
        number = None
    if number is None or number != number or not low <= number <= high:  # NaN fails too
        raise SettingRefused(f"{key} は {low} から {high} までの"
                             f"{'数' if kind is float else '整数'}で指定してください。")
    return number


def normalised(key: str, text: str, bounds: Bounds) -> str:
    """The text stored for an admin's value (checked): a ready persona by its name, numbers
    and switches in one spelling, so the audit shows real changes only."""
    value = parse_value(key, text, bounds)
    if key == "persona":
        return value.name if value.name in READY else text.strip()
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def resolve(host: Effective, layers: Sequence[tuple[Scope, Mapping[str, str]]],
            bounds: Bounds) -> Effective:
    """`host` with each scope's stored values over it, widest first; a value out of the host's
    current bounds (or a key it no longer lets communities change) is skipped."""
    values: dict[str, Any] = {}
    origins: dict[str, Level] = {key: Level.HOST for key in KEYS}
    for scope, stored in layers:
        for key, text in stored.items():
            try:
                values[key] = parse_value(key, text, bounds)
            except SettingRefused:
                continue
            origins[key] = scope.level
    return replace(host, **values, origins=origins)
