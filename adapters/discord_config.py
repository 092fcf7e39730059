"""Discord's `/rinna-config show|set|reset`: a community's admins shape the bot for their
server, a channel or a thread. Registered with default_member_permissions = Manage Server (so
others do not see it), and the rule (bot/privilege.py) checked again when it runs, since a
server may let others see the command. Every answer is ephemeral: for the person alone."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.ext import commands

from bot.community import Community
from bot.community_commands import CommunityAdmin, ConfigRequest
from bot.ports.community import KEYS, Scope
from bot.privilege import Member

log = logging.getLogger(__name__)

PLATFORM = "discord"
NOT_HERE = "この設定はサーバーの中でだけ使えます。"
NO_THREAD = "スレッドの設定はスレッドの中で使ってください。"
DISABLED = "このボットでは設定の変更が有効になっていません。"
_SCOPES = [Choice(name="サーバー全体", value="server"), Choice(name="このチャンネル", value="channel"),
           Choice(name="このスレッド", value="thread")]
_KEYS = [Choice(name=key, value=key) for key in KEYS]
_ERRORS = (discord.HTTPException, discord.InteractionResponded)


class ConfigHost(Protocol):
    community: Community | None

    async def refuse(self, interaction: discord.Interaction) -> bool: ...


def member_of(interaction: discord.Interaction) -> Member:
    """The person running the command, as the privilege rule needs them, read now."""
    user = interaction.user
    roles: frozenset[str] = frozenset()
    manages = False
    if isinstance(user, discord.Member):
        roles = frozenset({*(str(role.id) for role in user.roles),
                           *(role.name for role in user.roles)})
        manages = user.guild_permissions.manage_guild
    workspace = str(interaction.guild_id) if interaction.guild_id is not None else ""
    return Member(PLATFORM, str(user.id), workspace, manages_workspace=manages, roles=roles)


def scope_of(interaction: discord.Interaction, choice: str | None) -> Scope | None:
    """The scope named (default: the thread or channel the command runs in); None: a thread
    scope asked for outside a thread."""
    channel: Any = interaction.channel
    workspace = str(interaction.guild_id)
    in_thread = isinstance(channel, discord.Thread)
    parent = str(channel.parent_id) if in_thread else str(channel.id)
    wanted = choice or ("thread" if in_thread else "channel")
    if wanted == "server":
        return Scope(PLATFORM, workspace)
    if wanted == "channel":
        return Scope(PLATFORM, workspace, parent)
    return Scope(PLATFORM, workspace, parent, str(channel.id)) if in_thread else None


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
        await self._run(interaction, ConfigRequest("show"), scope)

    @app_commands.command(name="set", description="設定を変更します")
    @app_commands.choices(key=_KEYS, scope=_SCOPES)
    async def set(self, interaction: discord.Interaction, key: Choice[str], value: str,
                  scope: Choice[str] | None = None) -> None:
        await self._run(interaction, ConfigRequest("set", key.value, value), scope)

    @app_commands.command(name="reset", description="設定を元に戻します（キーなし: すべて）")
    @app_commands.choices(key=_KEYS, scope=_SCOPES)
    async def reset(self, interaction: discord.Interaction, key: Choice[str] | None = None,
                    scope: Choice[str] | None = None) -> None:
        await self._run(interaction, ConfigRequest("reset", key.value if key else None), scope)

    async def _run(self, interaction: discord.Interaction, request: ConfigRequest,
                   choice: Choice[str] | None) -> None:
        try:
            if await self.host.refuse(interaction):
                return
            await interaction.response.send_message(
                await self._answer(interaction, request, choice), ephemeral=True)
        except _ERRORS as exc:
            log.warning("/rinna-config %s: %s", interaction.id, exc, exc_info=exc)

    async def _answer(self, interaction: discord.Interaction, request: ConfigRequest,
                      choice: Choice[str] | None) -> str:
        if self.host.community is None:
            return DISABLED
        if interaction.guild_id is None or interaction.channel is None:
            return NOT_HERE
        scope = scope_of(interaction, choice.value if choice else None)
        if scope is None:
            return NO_THREAD
        admin = CommunityAdmin(self.host.community)
        return await admin.run(member_of(interaction), scope, request)
