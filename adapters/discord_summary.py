"""「要約」 on Discord: `/summary` and the message context menu 「要約」 hand the front door a
SUMMARY event (bot/core/front_door.py) with a reader of what to summarise: the thread read whole (to
the core's cap), or, in a channel, its last SUMMARY_CHANNEL_MESSAGES messages. Answered like
any answer (placeholder, buttons, exactly once), in the thread or as the command's response."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord_cogs import CogHost, told_switched_off
from adapters.discord_parse import PLATFORM, conversation_key, earlier_message
from adapters.discord_reply import (
    DELIVERY_ERRORS,
    ChannelDestination,
    Destination,
    DiscordReply,
    InteractionDestination,
    describe,
    tell_failure,
)
from bot.conversation import ConversationKey
from bot.core.front_events import Command, EarlierMessage, EarlierReader, Event
from bot.errors import RinnaError

log = logging.getLogger(__name__)

SUMMARY_MENU = "要約"  # the message context menu's name, as people see it
SUMMARY_TEXT = "要約"  # the request as it is stored (the user turn of the summary's exchange)
SUMMARY_WHERE = "{where} に要約を書きます。"
NO_HISTORY = "このチャンネルのメッセージ履歴を読む権限がないため、要約できません。"


class SummaryCog(commands.Cog):
    """`/summary` and the context menu 「要約」."""

    def __init__(self, bot: CogHost, channel_messages: int) -> None:
        self.bot = bot
        self.front = bot.front
        self.channel_messages = channel_messages
        self.menu = app_commands.ContextMenu(name=SUMMARY_MENU, callback=self.summarise_at)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def _may_not_read(self, interaction: discord.Interaction) -> bool:
        """True (after telling the person, ephemerally) when they may not read the channel's
        history: the bot reads with its own rights, so a summary would show them (and, posted
        in the channel, everyone) what they cannot read themselves."""
        if interaction.guild_id is None or interaction.permissions.read_message_history:
            return False
        try:
            await interaction.response.send_message(NO_HISTORY, ephemeral=True)
        except DELIVERY_ERRORS as exc:
            log.warning("summary %s: could not refuse it: %s", interaction.id, describe(exc))
        return True

    def _reader(self, channel: Any, before: discord.abc.Snowflake | None) -> EarlierReader:
        """A thread's messages (to the core's cap), or a channel's last messages."""
        me_id = self.bot.user.id if self.bot.user else 0
        limit = (self.front.most_turns() if isinstance(channel, discord.Thread)
                 else self.channel_messages)

        async def read() -> list[EarlierMessage]:
            picked: list[EarlierMessage] = []
            async for message in channel.history(limit=limit, before=before):
                if (item := earlier_message(message, me_id)) is not None:
                    picked.append(item)
            picked.reverse()
            return picked

        return read

    async def _summarise(self, interaction: discord.Interaction, key: ConversationKey,
                         destination: Destination, earlier: EarlierReader | None) -> None:
        sink = DiscordReply(destination, tag=str(interaction.id),
                            locate=self.bot.partial_message)
        try:
            await self.front.receive(Event(
                key, str(interaction.id), SUMMARY_TEXT, sink, writer=str(interaction.user.id),
                command=Command.SUMMARY, earlier=earlier, admitted=True))
        except Exception:
            log.exception("%s: could not write the summary %s", key, interaction.id)
            await sink.fail(RinnaError.user_message)
        finally:
            sink.stop_typing()

    async def _admitted(self, interaction: discord.Interaction) -> bool:
        """Not refused (told why), allowed to read here (told otherwise), not a replay."""
        if await self.bot.refuse(interaction) or await self._may_not_read(interaction):
            return False
        return self.front.admit(PLATFORM, str(interaction.id)) is None  # None: first sight

    @app_commands.command(name="summary",
                          description="このスレッド（チャンネルでは最近のメッセージ）を要約します")
    async def summary(self, interaction: discord.Interaction) -> None:
        if not await self._admitted(interaction):
            return
        channel = interaction.channel
        try:
            if await told_switched_off(self.front, interaction):  # a community's choice
                return
            await interaction.response.defer(thinking=True)
            dm = interaction.guild_id is None or isinstance(
                channel, (discord.DMChannel, discord.GroupChannel))
            await self._summarise(interaction, conversation_key(channel, interaction.guild_id),
                                  InteractionDestination(interaction),
                                  None if dm else self._reader(channel, None))
        except DELIVERY_ERRORS as exc:
            log.warning("/summary %s: %s", interaction.id, describe(exc), exc_info=exc)
        except Exception:
            log.exception("/summary %s: could not handle it", interaction.id)
            await tell_failure(interaction)

    async def summarise_at(self, interaction: discord.Interaction,
                           message: discord.Message) -> None:
        """「要約」 on a message: its thread summarised into the thread; in a channel, the
        channel's last messages up to it, as the command's response."""
        if not await self._admitted(interaction):
            return
        channel = interaction.channel
        try:
            if await told_switched_off(self.front, interaction):  # a community's choice
                return
            if isinstance(channel, discord.Thread):
                await interaction.response.defer(ephemeral=True, thinking=True)
                await interaction.edit_original_response(
                    content=SUMMARY_WHERE.format(where=channel.mention))
                await self._summarise(interaction,
                                      conversation_key(channel, interaction.guild_id),
                                      ChannelDestination(channel), self._reader(channel, None))
                return
            await interaction.response.defer(thinking=True)
            dm = interaction.guild_id is None or isinstance(
                channel, (discord.DMChannel, discord.GroupChannel))
            reader = None if dm else self._reader(channel, discord.Object(message.id + 1))
            await self._summarise(interaction, conversation_key(channel, interaction.guild_id),
                                  InteractionDestination(interaction), reader)
        except DELIVERY_ERRORS as exc:
            log.warning("%s %s: %s", SUMMARY_MENU, interaction.id, describe(exc), exc_info=exc)
        except Exception:
            log.exception("%s %s: could not handle it", SUMMARY_MENU, interaction.id)
            await tell_failure(interaction)
