"""Each community its own bot: settings per server/workspace, channel and thread, over the
host's defaults, changed by the community's admins while the bot runs.

Precedence: host (settings file) < workspace < channel < thread. The values come from the
store (bot/ports/community.py) through a per-process cache; a change drops the changed scope
from the cache of every process the store can tell (`on_change`: this one for SQLite,
NOTIFY for PostgreSQL), so the next answer uses it: no timer, no restart. The environment is
never read here: the host's part is built once from Settings in main().
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from bot.core.community_values import MIN_WINDOW, Bounds, Effective, normalised, resolve
from bot.conversation import ConversationKey
from bot.errors import ConfigError, NotPermitted, SettingRefused
from bot.core.personas import parse_persona
from bot.ports.community import KEYS, CommunityStore, Level, Scope, SettingChange
from bot.core.prompt import persona_forges, turn_cost
from bot.engine.tokenizer import Tokenizer
from bot.core.privilege import Member, Privileges

log = logging.getLogger(__name__)

CACHE_SCOPES = 4096  # scopes whose stored values are kept in memory
HOST_PERSONA_CHARS = 100_000


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The host's defaults, hard bounds and admin rule, from Settings."""

    defaults: Effective
    bounds: Bounds
    privileges: Privileges
    max_persona_tokens: int = 256

    @classmethod
    def from_settings(cls, settings: Any) -> HostPolicy:
        # A persona at its longest and a short question always fit: the window's floor, and
        # the most new tokens a community may ask for, leave room for both.
        floor = settings.max_persona_tokens + MIN_WINDOW
        bounds = Bounds(
            temperature=(settings.community_min_temperature,
                         settings.community_max_temperature),
            repetition_penalty=(1.0, settings.community_max_repetition_penalty),
            max_new_tokens=(1, max(1, min(settings.community_max_new_tokens,
                                          settings.context_tokens - floor))),
            window=(min(floor, settings.prompt_budget), settings.prompt_budget),
            persona_chars=settings.max_persona_chars,
            changeable=frozenset(settings.community_keys))
        try:
            # the host's own persona: bounded in tokens when the tokenizer is there
            persona = parse_persona(settings.persona, HOST_PERSONA_CHARS)
        except SettingRefused as exc:
            raise ConfigError(f"PERSONA: {exc.user_message}") from None
        defaults = Effective(
            persona=persona, enabled=True, mention_only=settings.mention_only,
            temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
            repetition_penalty=settings.repetition_penalty, window=settings.prompt_budget,
            buttons=settings.answer_buttons, context_tokens=settings.context_tokens)
        return cls(defaults, bounds, Privileges(frozenset(settings.admin_roles),
                                                frozenset(settings.admin_users)),
                   settings.max_persona_tokens)


class Community:
    def __init__(self, store: CommunityStore, policy: HostPolicy,
                 tokenizer: Tokenizer | None = None,
                 cache_size: int = CACHE_SCOPES) -> None:
        """`tokenizer`: the model's, so an admin's persona is also bounded in tokens
        (MAX_PERSONA_TOKENS) and checked not to forge a turn boundary when it is set; without
        it, only its characters are bounded (and the prompt refuses a forging one)."""
        self.store = store
        self.policy = policy
        self._tokenizer = tokenizer
        if tokenizer is not None:
            self._check_host_persona(tokenizer)
        self._cache: OrderedDict[Scope, dict[str, str]] = OrderedDict()
        self._cache_size = cache_size
        self.reads = 0  # store reads (tests see the cache work)
        store.on_change(self.invalidate)

    def _check_host_persona(self, tokenizer: Tokenizer) -> None:
        """The host's own PERSONA must leave room for a question in every prompt."""
        defaults = self.policy.defaults
        cost = sum(turn_cost(turn, tokenizer, defaults.prompt_budget)
                   for turn in defaults.persona.turns)
        if cost + MIN_WINDOW > defaults.prompt_budget:
            raise ConfigError(f"PERSONA: {cost} tokens leave too little of the prompt "
                              f"({defaults.prompt_budget} tokens) for the conversation; "
                              "shorten it (for example PERSONA=keigo)")

    def invalidate(self, scope: Scope) -> None:
        """A scope changed (here or in another process): read it again next time."""
        self._cache.pop(scope, None)

    async def effective(self, key: ConversationKey) -> Effective:
        """The settings that apply to a conversation (host < workspace < channel < thread)."""
        return resolve(self.policy.defaults, await self._layers(Scope.chain(key)),
                       self.policy.bounds)

    async def at(self, scope: Scope) -> tuple[Effective, dict[str, str]]:
        """The settings in force at `scope` itself, and what is set there (for show)."""
        chain = tuple(s for s in Scope.chain(
            ConversationKey(scope.platform, scope.workspace, scope.channel, scope.thread))
            if s.level <= scope.level)
        layers = await self._layers(chain)
        here = dict(next((v for s, v in layers if s == scope), {}))
        return resolve(self.policy.defaults, layers, self.policy.bounds), here

    async def _layers(self, chain: tuple[Scope, ...]) -> list[tuple[Scope, dict[str, str]]]:
        missing = [scope for scope in chain if scope not in self._cache]
        if missing:
            self.reads += 1
            found = await self.store.scope_values(missing)
            for scope in missing:
                self._cache[scope] = found.get(scope, {})
        layers = []
        for scope in chain:
            self._cache.move_to_end(scope)
            layers.append((scope, self._cache[scope]))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return layers

    async def change(self, member: Member, scope: Scope, key: str,
                     text: str) -> list[SettingChange]:
        """Set `key` at `scope` for `member`: NotPermitted or SettingRefused (nothing
        changes), else the audit rows written (empty: it already was so)."""
        self._check(member, scope)
        value = normalised(key, text, self.policy.bounds)
        if key == "persona":
            self._check_persona_tokens(value)
        return await self.store.change_settings(scope, {key: value}, member.user)

    async def reset(self, member: Member, scope: Scope,
                    key: str | None = None) -> list[SettingChange]:
        """Unset `key` (None: every key) at `scope`: the wider scope decides again."""
        self._check(member, scope)
        if key is not None and key not in KEYS:
            raise SettingRefused(f"「{key[:40]}」という設定はありません。使える設定: "
                                 f"{', '.join(KEYS)}")
        keys = KEYS if key is None else (key,)
        return await self.store.change_settings(scope, dict.fromkeys(keys), member.user)

    def _check(self, member: Member, scope: Scope) -> None:
        if (member.platform, member.workspace) != (scope.platform, scope.workspace) \
                or not self.policy.privileges.may_configure(member):
            log.info("%s: settings change by %s refused (not an admin here)", scope,
                     member.user)
            raise NotPermitted("not an admin of this workspace")

    def _check_persona_tokens(self, value: str) -> None:
        if self._tokenizer is None:
            return
        persona = parse_persona(value, self.policy.bounds.persona_chars)
        tokens = sum(turn_cost(turn, self._tokenizer, self.policy.max_persona_tokens)
                     for turn in persona.turns)
        if tokens > self.policy.max_persona_tokens:
            raise SettingRefused("ペルソナが長すぎます。もっと短く書いてください。")
        if persona_forges(persona.turns, self._tokenizer):
            raise SettingRefused("このペルソナはモデルに渡せない書き方を含んでいます。"
                                 "書き方を変えてください。")


def describe(settings: Effective) -> list[str]:
    """One line per key for /status and the config commands: value, and the scope that set it
    (ホスト, サーバー, チャンネル, スレッド)."""
    names = {Level.HOST: "既定", Level.WORKSPACE: "サーバー/ワークスペース",
             Level.CHANNEL: "チャンネル", Level.THREAD: "スレッド"}
    return [f"{key}: {settings.shown(key)}（{names[settings.origins.get(key, Level.HOST)]}）"
            for key in KEYS]
