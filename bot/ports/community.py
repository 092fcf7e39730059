"""The store's part for community settings: values per scope and the audit trail of changes.

A scope is a workspace (Discord server, Slack workspace), a channel in it, or a thread in a
channel; the host's defaults (Settings) sit under every scope and are never stored. Values are
kept as text, one row per (scope, key); the core parses and bounds them (bot/core/community.py).
Every change writes its audit row in the same transaction as the value, so neither exists
without the other. SQLite implements this today (storage/community.py); PostgreSQL implements
the same Protocol, and sends a notification on change (LISTEN/NOTIFY) where SQLite calls its
in-process listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from bot.conversation import ConversationKey


# The settings a community may have (bot/core/community_values.py parses and bounds them).
KEYS: tuple[str, ...] = ("persona", "enabled", "mention_only", "temperature", "max_new_tokens",
                         "repetition_penalty", "window", "buttons")


class Level(IntEnum):
    """Narrower scopes win: a thread's value beats its channel's, which beats the server's."""

    HOST = 0  # the host's settings file: never stored here
    WORKSPACE = 1
    CHANNEL = 2
    THREAD = 3


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a setting applies: (platform, workspace, channel, thread); empty parts are
    wider. ("discord", "G", "", "") is a server; ("slack", "T", "C", "") a channel."""

    platform: str
    workspace: str = ""
    channel: str = ""
    thread: str = ""

    @property
    def level(self) -> Level:
        if self.thread:
            return Level.THREAD
        if self.channel:
            return Level.CHANNEL
        return Level.WORKSPACE

    @classmethod
    def chain(cls, key: ConversationKey) -> tuple[Scope, ...]:
        """The scopes a conversation lies in, widest first."""
        scopes = [cls(key.platform, key.workspace), cls(key.platform, key.workspace, key.channel)]
        if key.thread:
            scopes.append(cls(key.platform, key.workspace, key.channel, key.thread))
        return tuple(scopes)

    def __str__(self) -> str:
        return f"{self.platform}:{self.workspace}/{self.channel}/{self.thread}"


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One audit row: who changed what where, from what to what (None: not set there, so
    the wider scope decides)."""

    scope: Scope
    key: str
    old: str | None
    new: str | None
    actor: str  # the platform user id of the person who changed it
    created_at: float  # seconds since the epoch


ChangeListener = Callable[[Scope], None]


class CommunityStore(Protocol):
    """Scoped settings and their audit trail."""

    async def scope_values(self, scopes: Sequence[Scope]) -> dict[Scope, dict[str, str]]:
        """The values set at each of `scopes` (a scope with none is left out)."""
        ...

    async def configured_scopes(self, platform: str, workspace: str) -> list[Scope]:
        """Every scope of a workspace with a value set (for the admins' overview)."""
        ...

    async def change_settings(self, scope: Scope, values: Mapping[str, str | None],
                              actor: str) -> list[SettingChange]:
        """Set (a string) or unset (None) keys at `scope`, writing one audit row per key that
        really changed, in one transaction; returns those rows (empty: nothing changed)."""
        ...

    async def audit(self, scope: Scope | None = None, limit: int = 20) -> list[SettingChange]:
        """The newest audit rows (of one scope, or all), newest first."""
        ...

    async def actor_changes(self, actor: str,
                            platform: str | None = None) -> list[SettingChange]:
        """Every change a person made, oldest first (for `export --user`)."""
        ...

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(scope)` after every committed change, from any process sharing the
        database where the implementation can tell (PostgreSQL's NOTIFY), or this one."""
        ...
