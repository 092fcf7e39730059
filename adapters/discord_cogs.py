"""The Discord client's cogs: messages and application commands parsed into front-door events
(`ChatCog`), and deletions and edits reaching the stored history (`MessageEditsCog`)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord_files import discord_attachments
from adapters.discord_parse import (ANSWERED_TYPES, MAX_TEXT_CHARS, PLATFORM, access_request,
                                    conversation_key, mentions_me, read_thread_history,
                                    readable_text, thread_name)
from adapters.discord_reply import (DELIVERY_ERRORS, THREAD_ARCHIVE_MINUTES, ChannelDestination,
                                    Destination, DiscordReply, EphemeralAnswer,
                                    InteractionDestination, NewThreadDestination, describe,
                                    tell_failure)
from bot.core.attachments import Fetcher
from bot.conversation import ConversationKey
from bot.errors import RinnaError
from bot.core.front_door import FrontDoor
from bot.core.front_events import Command, EarlierMessage, EarlierReader, Event
from bot.core.notices import SWITCHED_OFF
from bot.core.prompt import clean_text

log = logging.getLogger(__name__)


class CogHost(Protocol):
    """What the cogs use of the client (discord_bot.RinnaDiscordBot)."""

    front: FrontDoor
    tree: app_commands.CommandTree[Any]
    files: Fetcher | None  # downloads attachments (None: not read)

    @property
    def user(self) -> discord.ClientUser | None: ...

    async def refuse(self, interaction: discord.Interaction) -> bool: ...

    def partial_message(self, channel_id: int, message_id: int) -> discord.PartialMessage: ...

    def reply_in(self, key: ConversationKey, tag: str) -> DiscordReply: ...

    def get_partial_messageable(self, id: int, *, guild_id: int | None = None,
                                type: discord.ChannelType | None = None
                                ) -> discord.PartialMessageable: ...


THREAD_ALREADY_CREATED = 160004  # Discord's error code: the message already has a thread

HELP_MESSAGE = (
    "**rinna の使い方**\n"
    "・チャンネルでメンションして質問すると、スレッドを作ってそこで答えます。\n"
    "・スレッドの中ではメンションなしで続けて話せます。\n"
    "・DM ではそのまま話しかけてください。\n"
    "・`/ask 質問` でも質問できます。`/reset` でスレッドや DM の会話を最初からやり直します。\n"
    "・メッセージのメニュー（アプリ）の「rinna に聞く」で、そのメッセージについて質問できます。\n"
    "・`/summary` かメッセージのメニューの「要約」で、スレッド（チャンネルでは最近のメッセージ）"
    "を要約します。\n"
    "・回答の「停止」「もう一度」👍 👎 で、止める・答え直す・評価ができます。"
    "`/status` で今の状態を表示します。"
)
RESET_WHERE = "`/reset` はスレッドか DM の中で使ってください（チャンネルでの質問は毎回新しいスレッドになります）。"
ASK_ABOUT = "rinna に聞く"  # the message context menu's name, as people see it
ASK_ABOUT_WHERE = "{where} で答えます。"
ASK_ABOUT_HERE = "この DM で答えます。"
ASK_ABOUT_UNREADABLE = "このメッセージには読める文章がありません。"


class ChatCog(commands.Cog):
    """Chat listeners and application commands."""

    def __init__(self, bot: CogHost) -> None:
        self.bot = bot
        self.front = bot.front
        # discord.py cannot declare context menus inside a cog: made here, added on load
        self.ask_about_menu = app_commands.ContextMenu(name=ASK_ABOUT, callback=self.ask_about)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.ask_about_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.ask_about_menu.name, type=self.ask_about_menu.type)

    async def _refuse(self, interaction: discord.Interaction) -> bool:
        return await self.bot.refuse(interaction)

    # --- messages
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or not self._wanted(message, me):
            return
        # Before anything is parsed, stored or sent: who may ask, and whether it is new.
        guild_id = message.guild.id if message.guild is not None else None
        access = access_request(message.channel, guild_id, message.author)
        if self.front.admit(PLATFORM, str(message.id), [access]) is not None:
            return
        try:
            await self._on_message(message, me)
        except DELIVERY_ERRORS as exc:
            log.warning("message %s: %s", message.id, describe(exc), exc_info=exc)
        except Exception:  # the platform's error boundary: logged, the client keeps running
            log.exception("message %s: could not handle it", message.id)

    @staticmethod
    def _wanted(message: discord.Message, me: discord.ClientUser) -> bool:
        author = message.author
        return (author.id != me.id and not author.bot and not author.system
                and message.webhook_id is None and message.type in ANSWERED_TYPES)

    async def _on_message(self, message: discord.Message, me: discord.ClientUser) -> None:
        channel = message.channel
        guild_id = message.guild.id if message.guild is not None else None
        mentioned = mentions_me(message, me)
        text = readable_text(message, me.id)
        files = discord_attachments(message.attachments)
        parsed = dict(delivery_key=str(message.id), text=text, writer=str(message.author.id),
                      admitted=True, attachments=files, files=self.bot.files)
        if isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
            await self._answer(conversation_key(channel, None), ChannelDestination(channel),
                               **parsed)
            return
        key = conversation_key(channel, guild_id)
        if isinstance(channel, discord.Thread):
            # Unmentioned: only in a thread the bot takes part in (the chat service decides;
            # an empty text is unreadable without the Message Content intent).
            await self._answer(key, ChannelDestination(channel), addressed=mentioned,
                               earlier=self._earlier(channel, before=message), **parsed)
            return
        if not mentioned:
            return
        if not text and not files:  # only a mention: a usage hint in the channel, no thread
            await self._answer(key, ChannelDestination(channel), **parsed)
            return
        key = ConversationKey(key.platform, key.workspace, key.channel, str(message.id))
        name = thread_name(text or files[0].name)
        await self._answer(key, NewThreadDestination(message, name), **parsed)

    def _earlier(self, thread: discord.Thread,
                 before: discord.abc.Snowflake | None) -> EarlierReader:
        """A reader of the thread's earlier messages, for the front door to call when the bot
        joins the thread mid-way (and only then)."""
        me_id = self.bot.user.id if self.bot.user else 0

        async def read() -> list[EarlierMessage]:
            return await read_thread_history(thread, before, me_id)

        return read

    async def _answer(self, key: ConversationKey, destination: Destination, *,
                      delivery_key: str, text: str, **event: Any) -> str | None:
        """The one place a Discord event reaches the front door."""
        sink = DiscordReply(destination, tag=delivery_key, locate=self.bot.partial_message)
        try:
            return await self.front.receive(
                Event(key, delivery_key, text, sink, **event))
        except Exception:
            log.exception("%s: could not answer message %s", key, delivery_key)
            await sink.fail(RinnaError.user_message)
            return None
        finally:
            sink.stop_typing()

    # --- application commands
    async def _switched_off(self, interaction: discord.Interaction) -> bool:
        return await told_switched_off(self.front, interaction)

    @app_commands.command(name="ask", description="rinna に質問します")
    @app_commands.rename(question="質問")
    @app_commands.describe(question="質問の内容")
    async def ask(self, interaction: discord.Interaction, question: str) -> None:
        if await self._refuse(interaction) or await self._switched_off(interaction):
            return
        question = question[:MAX_TEXT_CHARS]
        try:
            await interaction.response.defer(thinking=True)
            await self._ask(interaction, question)
        except DELIVERY_ERRORS as exc:
            log.warning("/ask %s: %s", interaction.id, describe(exc), exc_info=exc)
        except Exception:
            log.exception("/ask %s: could not handle it", interaction.id)
            await tell_failure(interaction)

    async def _ask(self, interaction: discord.Interaction, question: str) -> None:
        channel = interaction.channel
        key = conversation_key(channel, interaction.guild_id)
        text = question.strip()
        parsed = dict(delivery_key=str(interaction.id), text=text,
                      writer=str(interaction.user.id))
        if isinstance(channel, discord.Thread):
            await self._answer(key, InteractionDestination(interaction),
                               earlier=self._earlier(channel, before=None), **parsed)
            return
        if interaction.guild_id is None or not clean_text(text).strip():
            await self._answer(key, InteractionDestination(interaction), **parsed)
            return
        original = await interaction.original_response()
        thread = await self._open_thread(original, thread_name(text))
        key = ConversationKey(key.platform, key.workspace, key.channel, str(original.id))
        await self._answer(key, InteractionDestination(interaction, then=thread), **parsed)

    @staticmethod
    async def _open_thread(message: discord.Message, name: str) -> discord.Thread | None:
        try:
            return await message.create_thread(name=name,
                                               auto_archive_duration=THREAD_ARCHIVE_MINUTES)
        except DELIVERY_ERRORS as exc:
            log.warning("could not open a thread on the /ask answer %s (%s)",
                        message.id, describe(exc))
            return None

    # --- the message context menu 「rinna に聞く」
    async def ask_about(self, interaction: discord.Interaction,
                        message: discord.Message) -> None:
        """Answer about `message` in a thread on it (the thread it is in, if any), the
        message as the question; the person who pressed is told where, ephemerally."""
        if await self._refuse(interaction):
            return
        if self.front.admit(PLATFORM, str(interaction.id)) is not None:  # a replayed one
            return
        try:
            if await self._switched_off(interaction):  # told so, never a "thinking…" left
                return
            # Acknowledged first: Discord refuses a second response to the same press, so a
            # replay that slipped past the check above ends here.
            await interaction.response.defer(ephemeral=True, thinking=True)
            await self._ask_about(interaction, message)
        except DELIVERY_ERRORS as exc:
            log.warning("%s %s: %s", ASK_ABOUT, interaction.id, describe(exc), exc_info=exc)
        except Exception:
            log.exception("%s %s: could not handle it", ASK_ABOUT, interaction.id)
            await tell_failure(interaction)

    async def _ask_about(self, interaction: discord.Interaction,
                         message: discord.Message) -> None:
        me_id = self.bot.user.id if self.bot.user else 0
        text = readable_text(message, me_id)
        if not clean_text(text).strip():
            await interaction.edit_original_response(content=ASK_ABOUT_UNREADABLE)
            return
        # Checked for redelivery above (before the defer): not again at the front door.
        parsed = dict(delivery_key=str(interaction.id), text=text,
                      writer=str(message.author.id), asker=str(interaction.user.id),
                      about=str(message.id), admitted=True)
        channel = interaction.channel
        guild_id = interaction.guild_id
        if guild_id is None or isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
            key = conversation_key(channel, None)
            await interaction.edit_original_response(content=ASK_ABOUT_HERE)
            await self._answer(key, ChannelDestination(channel), **parsed)
            return
        if isinstance(channel, discord.Thread):  # also a forum post: answer in it
            key = conversation_key(channel, guild_id)
            await interaction.edit_original_response(
                content=ASK_ABOUT_WHERE.format(where=channel.mention))
            await self._answer(key, ChannelDestination(channel),
                               earlier=self._earlier(channel, before=message), **parsed)
            return
        # A channel message: the thread on it (opened now, or the one people already use).
        base = conversation_key(channel, guild_id)
        key = ConversationKey(base.platform, base.workspace, base.channel, str(message.id))
        thread = await self._thread_on(message, thread_name(text))
        target: discord.abc.Messageable = thread if thread is not None else channel
        await interaction.edit_original_response(
            content=ASK_ABOUT_WHERE.format(where=f"<#{getattr(target, 'id', channel.id)}>"))
        earlier = (self._earlier(thread, before=None)
                   if isinstance(thread, discord.Thread) else None)
        await self._answer(key, ChannelDestination(target), earlier=earlier, **parsed)

    async def _thread_on(self, message: discord.Message,
                         name: str) -> discord.Thread | discord.PartialMessageable | None:
        """The thread on a channel message: the known one, a new one, or (when Discord says
        one exists that this client has not seen) that one; None if none can be opened."""
        guild = message.guild
        known = guild.get_thread(message.id) if guild is not None else None
        if known is not None:
            return known
        try:
            return await message.create_thread(name=name,
                                               auto_archive_duration=THREAD_ARCHIVE_MINUTES)
        except discord.HTTPException as exc:
            if exc.code == THREAD_ALREADY_CREATED:
                return self.bot.get_partial_messageable(message.id, guild_id=message.guild.id
                                                        if guild is not None else None)
            log.warning("could not open a thread on message %s (%s); answering in the channel",
                        message.id, describe(exc))
            return None

    @app_commands.command(name="reset", description="このスレッド（または DM）の会話を最初からやり直します")
    async def reset(self, interaction: discord.Interaction) -> None:
        if await self._refuse(interaction):
            return
        channel = interaction.channel
        try:
            if not isinstance(channel, (discord.Thread, discord.DMChannel)):
                await interaction.response.send_message(RESET_WHERE, ephemeral=True)
                return
            await interaction.response.defer(thinking=True)
            # Recorded with its confirmation, then shown, then marked: a restart in between
            # shows the confirmation in the conversation (recovery_sink) and resets nothing.
            await self._answer(conversation_key(channel, interaction.guild_id),
                               InteractionDestination(interaction),
                               delivery_key=str(interaction.id), text="",
                               writer=str(interaction.user.id), command=Command.RESET)
        except DELIVERY_ERRORS as exc:
            log.warning("/reset %s: %s", interaction.id, describe(exc), exc_info=exc)
        except Exception:
            log.exception("/reset %s: could not handle it", interaction.id)
            await tell_failure(interaction)

    @app_commands.command(name="help", description="rinna の使い方を表示します")
    async def help(self, interaction: discord.Interaction) -> None:
        if await self._refuse(interaction):
            return
        try:
            await self.front.receive(Event(
                conversation_key(interaction.channel, interaction.guild_id),
                str(interaction.id), "", EphemeralAnswer(interaction),
                writer=str(interaction.user.id), command=Command.HELP))
        except DELIVERY_ERRORS as exc:
            log.warning("/help %s: %s", interaction.id, describe(exc), exc_info=exc)


async def told_switched_off(front: FrontDoor, interaction: discord.Interaction) -> bool:
    """True (after telling the person, ephemerally, as the interaction's first response) where
    a community switched the bot off: a command there never leaves a "thinking…" behind."""
    if not await front.switched_off(conversation_key(interaction.channel, interaction.guild_id)):
        return False
    await interaction.response.send_message(SWITCHED_OFF, ephemeral=True)
    return True


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


class StatusCog(commands.Cog):
    """`/status`: how the bot is doing, shown only to the person who asked."""

    def __init__(self, host: CogHost) -> None:
        self.host = host

    @app_commands.command(name="status", description="rinna の状態を表示します")
    async def status(self, interaction: discord.Interaction) -> None:
        try:
            if await self.host.refuse(interaction):
                return
            await interaction.response.defer(ephemeral=True, thinking=True)
            await self.host.front.receive(Event(
                conversation_key(interaction.channel, interaction.guild_id),
                str(interaction.id), "", EphemeralAnswer(interaction, deferred=True),
                writer=str(interaction.user.id), command=Command.STATUS))
        except DELIVERY_ERRORS as exc:
            log.warning("/status %s: %s", interaction.id, describe(exc), exc_info=exc)
