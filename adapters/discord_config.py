"""Discord's `/rinna-config show|set|reset`: a community's admins shape the bot for their
server, a channel or a thread. Registered with default_member_permissions = Manage Server (so
others do not see it), and the rule (bot/core/privilege.py) checked again when it runs, since a
server may let others see the command. Every answer is ephemeral: for the person alone."""

from __future__ import annotations

import logging
from typing import Protocol

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.ext import commands

from adapters.discord_parse import conversation_key
from adapters.discord_reply import EphemeralAnswer
from bot.core.front_door import FrontDoor
from bot.core.front_events import Command, Event
from bot.ports.community import KEYS
from bot.core.privilege import Member

log = logging.getLogger(__name__)

PLATFORM = "discord"
_SCOPES = [Choice(name="サーバー全体", value="server"), Choice(name="このチャンネル", value="channel"),
           Choice(name="このスレッド", value="thread")]
_KEYS = [Choice(name=key, value=key) for key in KEYS]
_ERRORS = (discord.HTTPException, discord.InteractionResponded)


class ConfigHost(Protocol):
    front: FrontDoor

    async def refuse(self, interaction: discord.Interaction) -> bool: ...


def member_of(interaction: discord.Interaction) -> Member:
    """The person running the command, as the privilege rule needs them, read now."""
    user = interaction.user
    roles: frozenset[str] = frozenset()
    manages = False
    if isinstance(user, discord.Member):
        # Ids only: anyone with Manage Roles can make a role of any name.
        roles = frozenset(str(role.id) for role in user.roles)
        manages = user.guild_permissions.manage_guild
    workspace = str(interaction.guild_id) if interaction.guild_id is not None else ""
    return Member(PLATFORM, str(user.id), workspace, manages_workspace=manages, roles=roles)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ConfigCog(commands.GroupCog, group_name="rinna-config",
                group_description="rinna の設定（サーバー・チャンネル・スレッドごと）"):
    def __init__(self, host: ConfigHost) -> None:
        self.host = host
        super().__init__()

    @app_commands.command(name="show", description="今の設定を表示します")
    @app_commands.choices(scope=_SCOPES)
    async def show(self, interaction: discord.Interaction,
                   scope: Choice[str] | None = None) -> None:
        await self._run(interaction, "show", scope)

    @app_commands.command(name="set", description="設定を変更します")
    @app_commands.choices(key=_KEYS, scope=_SCOPES)
    async def set(self, interaction: discord.Interaction, key: Choice[str], value: str,
                  scope: Choice[str] | None = None) -> None:
        await self._run(interaction, f"set {key.value} {value}", scope)

    @app_commands.command(name="reset", description="設定を元に戻します（キーなし: すべて）")
    @app_commands.choices(key=_KEYS, scope=_SCOPES)
    async def reset(self, interaction: discord.Interaction, key: Choice[str] | None = None,
                    scope: Choice[str] | None = None) -> None:
        await self._run(interaction, f"reset {key.value if key else ''}".strip(), scope)

    async def _run(self, interaction: discord.Interaction, request: str,
                   choice: Choice[str] | None) -> None:
        """Through the front door like every command: `config [scope] request` where the
        command runs (the thread, else the channel), answered to the person alone."""
        try:
            if await self.host.refuse(interaction):
                return
            text = " ".join(["config", *([choice.value] if choice else []), request])
            await self.host.front.receive(Event(
                conversation_key(interaction.channel, interaction.guild_id),
                str(interaction.id), text, EphemeralAnswer(interaction),
                writer=str(interaction.user.id), command=Command.CONFIG,
                member=member_of(interaction)))
        except _ERRORS as exc:
            log.warning("/rinna-config %s: %s", interaction.id, exc, exc_info=exc)
