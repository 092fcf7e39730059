"""Deleting or editing a message on Discord reaches the turn stored from it, through the front
door (`FrontDoor.deleted`, `FrontDoor.edited`)."""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from adapters.discord_cogs import CogHost
from adapters.discord_parse import PLATFORM, access_request, readable_text

log = logging.getLogger(__name__)


class MessageEditsCog(commands.Cog):
    """Deleting or editing a message on Discord does the same to the turn stored from it, so
    the next prompt no longer holds what the person took back."""

    def __init__(self, bot: CogHost) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._deleted([payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._deleted(sorted(payload.message_ids))

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        me, message = self.bot.user, payload.message
        if me is None or message.author.id == me.id or message.author.bot:
            return
        edited = payload.data.get("edited_timestamp") or message.edited_at
        try:
            await self.bot.front.edited(
                PLATFORM, str(payload.message_id), readable_text(message, me.id),
                edit_id=str(edited or ""), has_files=bool(message.attachments),
                access=[access_request(message.channel, payload.guild_id, message.author)],
                sink_for=lambda delivery: self.bot.reply_in(delivery.key,
                                                            delivery.delivery_key))
        except Exception:  # the error boundary: logged, the client keeps running
            log.exception("message %s: could not apply its edit to the history",
                          payload.message_id)

    async def _deleted(self, message_ids: list[int]) -> None:
        for message_id in message_ids:
            try:
                await self.bot.front.deleted(PLATFORM, str(message_id))
            except Exception:
                log.exception("message %s: could not delete it from the history", message_id)
