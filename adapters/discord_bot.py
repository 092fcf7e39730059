"""Discord adapter: a thin layer from discord.py events to the chat service.

Platform event in -> (ConversationKey, IncomingMessage, DiscordReply) -> `ChatService.handle`.

- A mention in a channel opens a public thread on that message (the thread's id is the
  message's id, so the conversation key is known before the thread exists) and answers there.
- Messages in a thread the bot takes part in need no mention. In a thread the bot does not
  follow yet, the chat service reads the thread's earlier messages (through the loader this
  adapter hands it) before answering a mention.
- Every reply message is sent with a nonce made from the delivery key (Discord then returns
  the first message for a retried send instead of creating a second); the placeholder's
  channel/message id is kept, so a restart edits it (`RinnaDiscordBot.recovery_sink`).
- A DM is one conversation. `/ask`, `/reset` and `/help` are application commands, synced in
  `setup_hook`.

Errors: Discord errors while replying are logged by the sink (bot/reply.py) and never reach
the chat service; the chat service's own failures end the placeholder with a Japanese
message; anything else is logged with its traceback here and the user gets a generic line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord_config import ConfigCog
from adapters.discord_controls import (AnswerControls, ControlsView, StatusCog, controls_view,
                                       message_ref)
from bot.access import DENIED_MESSAGE, AccessPolicy, AccessRequest
from bot.chat import ChatService, EarlierLoader, Outcome
from bot.config import Settings
from bot.conversation import RETIRED, ConversationKey, IncomingMessage, Speaker, Turn
from bot.errors import ConfigError, RinnaError
from bot.notices import RESET_DONE, SWITCHED_OFF, short_title
from bot.ports.records import Delivery
from bot.prompt import clean_text
from bot.reply import MessageReply
from bot.status import StatusSource

log = logging.getLogger(__name__)

PLATFORM = "discord"
DELIVERY_ERRORS: tuple[type[BaseException], ...] = (
    discord.HTTPException, aiohttp.ClientError, TimeoutError)
THREAD_NAME_CHARS = 50  # Discord allows 100; a short name reads better in the channel list
THREAD_ARCHIVE_MINUTES = 1440
DEFAULT_THREAD_NAME = "rinna との会話"
HISTORY_SCAN_LIMIT = 200  # messages read back at most when joining a thread mid-way
TYPING_EVERY_S = 8.0  # Discord shows the indicator for about 10 s per trigger
MAX_TEXT_CHARS = 4000  # Discord's own limit (with Nitro): longer text is not Discord's
THREAD_ALREADY_CREATED = 160004  # Discord's error code: the message already has a thread

HELP_MESSAGE = (
    "**rinna の使い方**\n"
    "・チャンネルでメンションして質問すると、スレッドを作ってそこで答えます。\n"
    "・スレッドの中ではメンションなしで続けて話せます。\n"
    "・DM ではそのまま話しかけてください。\n"
    "・`/ask 質問` でも質問できます。`/reset` でスレッドや DM の会話を最初からやり直します。\n"
    "・メッセージのメニュー（アプリ）の「rinna に聞く」で、そのメッセージについて質問できます。\n"
    "・回答の「停止」「もう一度」👍 👎 で、止める・答え直す・評価ができます。"
    "`/status` で今の状態を表示します。"
)
RESET_WHERE = "`/reset` はスレッドか DM の中で使ってください（チャンネルでの質問は毎回新しいスレッドになります）。"
ASK_ABOUT = "rinna に聞く"  # the message context menu's name, as people see it
ASK_ABOUT_WHERE = "{where} で答えます。"
ASK_ABOUT_HERE = "この DM で答えます。"
ASK_ABOUT_UNREADABLE = "このメッセージには読める文章がありません。"

# Linear patterns (user text): a fixed-length id between fixed delimiters; runs of blanks.
_MENTION = re.compile(r"<(@[!&]?|#)([0-9]{15,21})>")
_SPACES = re.compile(r"[ \t]{2,}")
_ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)


# ----- pure helpers ----------------------------------------------------------------------------


def conversation_key(channel: Any, guild_id: int | None) -> ConversationKey:
    """The conversation a Discord channel stands for (a plain guild channel: thread="")."""
    workspace = str(guild_id) if guild_id is not None else ""
    if isinstance(channel, discord.Thread):
        return ConversationKey(PLATFORM, workspace, str(channel.parent_id), str(channel.id))
    return ConversationKey(PLATFORM, workspace, str(channel.id))


def thread_name(question: str) -> str:
    return short_title(question, THREAD_NAME_CHARS) or DEFAULT_THREAD_NAME


def mentions_me(message: discord.Message, me: discord.abc.User) -> bool:
    """Whether the text itself mentions the bot (or its managed role); @everyone does not count."""
    if me.id in message.raw_mentions:
        return True
    role = message.guild.self_role if message.guild is not None else None
    return role is not None and role.id in message.raw_role_mentions


def readable_text(message: discord.Message, me_id: int) -> str:
    """The message text as people read it: the bot's own mention removed, other mentions as
    @display name / @role / #channel."""
    guild = message.guild
    self_role = guild.self_role if guild is not None else None

    def replace(match: re.Match[str]) -> str:
        kind, ident = match.group(1), int(match.group(2))
        if kind in ("@", "@!"):
            if ident == me_id:
                return ""
            member = (guild.get_member(ident) if guild is not None else None) or discord.utils.get(
                message.mentions, id=ident)
            return f"@{member.display_name}" if member is not None else match.group(0)
        if kind == "@&":
            if self_role is not None and ident == self_role.id:
                return ""
            role = guild.get_role(ident) if guild is not None else None
            return f"@{role.name}" if role is not None else match.group(0)
        channel = guild.get_channel_or_thread(ident) if guild is not None else None
        return f"#{channel.name}" if channel is not None else match.group(0)

    content = message.content[:MAX_TEXT_CHARS]  # cut before anything parses it
    return _SPACES.sub(" ", _MENTION.sub(replace, content)).strip()


def _history_source(message: discord.Message) -> discord.Message | None:
    """The message a thread message stands for: a thread's starter, the message it started
    from (None if Discord did not resolve it); any other, itself."""
    if message.type == discord.MessageType.thread_starter_message and message.reference:
        resolved = message.reference.resolved
        return resolved if isinstance(resolved, discord.Message) else None
    return message


def history_turn(message: discord.Message, me_id: int) -> Turn | None:
    """A thread message as a stored turn: people -> ユーザー, the bot -> システム; others None."""
    if (source := _history_source(message)) is None:
        return None
    message = source
    if message.type not in _ANSWERED_TYPES:
        return None
    text = readable_text(message, me_id)
    if not text:
        return None
    if message.author.id == me_id:
        return Turn(Speaker.SYSTEM, text)
    if message.author.bot or message.author.system:
        return None
    return Turn(Speaker.USER, text)


async def read_thread_history(
    thread: discord.Thread, before: discord.abc.Snowflake | None, me_id: int,
    skip: int | None = None,
) -> list[tuple[Turn, str | None, str | None]]:
    """The thread's recent messages before `before`, oldest first (the chat service keeps
    the newest that fit the prompt), each with its message id and, for a person's message,
    the author's user id (so `forget --user` finds imported messages too). A message whose
    source is `skip` (the one being asked about) is left out: it comes as the question."""
    picked: list[tuple[Turn, str | None, str | None]] = []
    async for message in thread.history(limit=HISTORY_SCAN_LIMIT, before=before):
        if (turn := history_turn(message, me_id)) is None:
            continue
        source = _history_source(message)
        if skip is not None and (message.id == skip or (source is not None
                                                         and source.id == skip)):
            continue
        author = (str(source.author.id)
                  if turn.speaker is Speaker.USER and source is not None else None)
        picked.append((turn, str(message.id), author))
    picked.reverse()
    return picked


def access_request(channel: Any, guild_id: int | None, user: Any) -> AccessRequest:
    """What the access policy judges: a thread counts as its parent channel; roles are the
    member's (none in a DM)."""
    is_dm = isinstance(channel, (discord.DMChannel, discord.GroupChannel)) or guild_id is None
    where = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
    channel_id = where if where is not None else getattr(channel, "id", "")
    roles = frozenset(str(role.id) for role in getattr(user, "roles", ()) or ())
    return AccessRequest("" if guild_id is None else str(guild_id), str(channel_id),
                         str(user.id), roles, is_dm)


# ----- where a reply goes ----------------------------------------------------------------------


class Destination(Protocol):
    async def send(self, text: str, nonce: str | None = None,
                   view: discord.ui.View | None = None) -> Any: ...


async def _send(channel: Any, text: str, nonce: str | None,
                view: discord.ui.View | None = None) -> Any:
    if nonce is None:
        return await channel.send(text, view=view)
    return await channel.send(text, nonce=nonce, view=view)  # discord.py also sets enforce_nonce


def reply_nonce(delivery_key: str, part: int) -> str:
    """The nonce of a reply's message `part` (Discord allows 25 characters)."""
    return hashlib.sha256(f"{delivery_key}:{part}".encode()).hexdigest()[:25]


class ChannelDestination:
    """Post into a channel, thread or DM."""

    def __init__(self, channel: discord.abc.Messageable) -> None:
        self.channel = channel

    async def send(self, text: str, nonce: str | None = None,
                   view: discord.ui.View | None = None) -> discord.Message:
        return await _send(self.channel, text, nonce, view)


class NewThreadDestination:
    """Open a public thread on `message` at the first send and post there. If the thread
    cannot be opened (no permission, say), the reply goes to the message's channel instead."""

    def __init__(self, message: discord.Message, name: str) -> None:
        self.message = message
        self.name = name
        self.target: discord.abc.Messageable | None = None

    async def send(self, text: str, nonce: str | None = None,
                   view: discord.ui.View | None = None) -> discord.Message:
        if self.target is None:
            self.target = await self._open()
        return await _send(self.target, text, nonce, view)

    async def _open(self) -> discord.abc.Messageable:
        try:
            return await self.message.create_thread(
                name=self.name, auto_archive_duration=THREAD_ARCHIVE_MINUTES)
        except DELIVERY_ERRORS as exc:
            log.warning("could not open a thread on message %s (%s); answering in the channel",
                        self.message.id, _describe(exc))
            return self.message.channel


class InteractionDestination:
    """The first send fills the deferred interaction response; later ones go to `then`
    (the thread opened on the answer) or, without one, to interaction follow-ups."""

    def __init__(self, interaction: discord.Interaction,
                 then: discord.abc.Messageable | None = None) -> None:
        self.interaction = interaction
        self.then = then
        self._original_used = False

    async def send(self, text: str, nonce: str | None = None,
                   view: discord.ui.View | None = None) -> Any:
        if not self._original_used:
            self._original_used = True
            return await self.interaction.edit_original_response(content=text, view=view)
        if self.then is not None:
            return await _send(self.then, text, nonce, view)
        if view is None:
            return await self.interaction.followup.send(text, wait=True)
        return await self.interaction.followup.send(text, wait=True, view=view)


async def _tell_failure(interaction: discord.Interaction) -> None:
    """End a deferred command with the generic Japanese error (it would spin until expiry)."""
    try:
        await interaction.edit_original_response(content=RinnaError.user_message)
    except DELIVERY_ERRORS as exc:
        log.warning("interaction %s: could not report the failure: %s", interaction.id,
                    _describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, discord.HTTPException):
        return f"Discord error {exc.status} {exc.code}"
    return f"{type(exc).__name__}: {exc}"[:200]


# ----- the sink ------------------------------------------------------------------------------


class DiscordReply(MessageReply):
    """A reply as Discord messages: placeholder, edits, split pieces; typing while it runs.
    The main message (part 0) carries the buttons the chat service offers (停止 while it
    streams; もう一度 and 👍/👎 once answered); `retire` takes もう一度 off an earlier answer."""

    limit = 2000
    # discord.py turns API errors into HTTPException, but lets some network failures through
    delivery_errors = DELIVERY_ERRORS

    def __init__(self, destination: Destination, tag: str | None = None,
                 locate: Callable[[int, int], Any] | None = None) -> None:
        super().__init__(tag)
        self.destination = destination
        self._locate = locate  # (channel id, message id) -> a message to edit (recovery)
        self._typing: asyncio.Task[None] | None = None

    async def post(self, text: str, *, part: int = 0) -> Any:
        view = controls_view(self.controls_for(part))
        buttons = {} if view is None else {"view": view}  # a new message: none is no buttons
        if self.tag is None:
            return await self.destination.send(text, **buttons)
        return await self.destination.send(text, reply_nonce(self.tag, part), **buttons)

    def ref(self, handle: Any) -> str | None:
        return message_ref(handle)

    def restore(self, ref: str) -> Any:
        channel_id, _, message_id = ref.partition("/")
        if self._locate is None or not (channel_id.isdigit() and message_id.isdigit()):
            return None
        return self._locate(int(channel_id), int(message_id))

    async def edit(self, handle: Any, text: str, *, final: bool) -> None:
        # Only the main message has buttons; view=None removes any it had.
        view = controls_view(self.controls_for(0 if handle is self._handle else 1))
        await handle.edit(content=text, view=view)  # discord.py paces edits itself

    async def retire(self, ref: str) -> None:
        """An earlier answer's main message keeps its text and 👍/👎, loses もう一度."""
        if (message := self.restore(ref)) is None:
            log.warning("cannot retire the answer at %r: not a Discord message reference", ref)
            return
        await message.edit(view=controls_view(RETIRED))

    async def start(self) -> None:
        await super().start()
        channel = getattr(self.posted[0], "channel", None) if self.posted else None
        if channel is not None and self._typing is None:
            self._typing = asyncio.create_task(_keep_typing(channel), name="discord-typing")

    async def finish(self, text: str) -> None:
        self.stop_typing()
        await super().finish(text)

    async def fail(self, message: str) -> None:
        self.stop_typing()
        await super().fail(message)

    def stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None


async def _keep_typing(channel: Any) -> None:
    """Show "rinna is typing…" until cancelled; give up quietly-but-logged on Discord errors."""
    try:
        while True:
            await channel.typing()
            await asyncio.sleep(TYPING_EVERY_S)
    except DELIVERY_ERRORS as exc:
        log.info("typing indicator unavailable in channel %s: %s",
                 getattr(channel, "id", "?"), _describe(exc))


# ----- the cog -------------------------------------------------------------------------------


class ChatCog(commands.Cog):
    """Chat listeners and application commands."""

    def __init__(self, bot: RinnaDiscordBot) -> None:
        self.bot = bot
        self.chat = bot.chat
        self.policy = bot.policy
        # discord.py cannot declare context menus inside a cog: made here, added on load
        self.ask_about_menu = app_commands.ContextMenu(name=ASK_ABOUT, callback=self.ask_about)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.ask_about_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.ask_about_menu.name, type=self.ask_about_menu.type)

    def _permits(self, request: AccessRequest) -> bool:
        denial = self.policy.check(request)
        if denial is not None:
            log.debug("user %s in %s/%s refused: %s", request.user, request.workspace,
                      request.channel, denial)
        return denial is None

    async def _refuse(self, interaction: discord.Interaction) -> bool:
        return await self.bot.refuse(interaction)

    async def _switched_off(self, interaction: discord.Interaction) -> bool:
        """True (after telling the person, ephemerally) where a community switched it off."""
        key = conversation_key(interaction.channel, interaction.guild_id)
        if not await self.chat.switched_off(key):
            return False
        await interaction.response.send_message(SWITCHED_OFF, ephemeral=True)
        return True

    # --- messages
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or not self._wanted(message, me):
            return
        # Before anything is parsed, stored or sent: who may ask, and whether it is new.
        guild_id = message.guild.id if message.guild is not None else None
        if not self._permits(access_request(message.channel, guild_id, message.author)):
            return
        if not self.chat.first_sight(PLATFORM, str(message.id)):
            return
        try:
            await self._on_message(message, me)
        except DELIVERY_ERRORS as exc:
            log.warning("message %s: %s", message.id, _describe(exc), exc_info=exc)
        except Exception:  # the platform's error boundary: logged, the client keeps running
            log.exception("message %s: could not handle it", message.id)

    @staticmethod
    def _wanted(message: discord.Message, me: discord.ClientUser) -> bool:
        author = message.author
        return (author.id != me.id and not author.bot and not author.system
                and message.webhook_id is None and message.type in _ANSWERED_TYPES)

    async def _on_message(self, message: discord.Message, me: discord.ClientUser) -> None:
        channel = message.channel
        mentioned = mentions_me(message, me)
        text = readable_text(message, me.id)
        incoming = IncomingMessage(text, str(message.id), str(message.author.id))
        if isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
            key = conversation_key(channel, None)
            await self._answer(key, incoming, ChannelDestination(channel))
            return
        key = conversation_key(channel, message.guild.id if message.guild else None)
        if isinstance(channel, discord.Thread):
            # Unmentioned: only in a thread the bot takes part in (the chat service decides;
            # an empty text is unreadable without the Message Content intent).
            await self._answer(key, incoming, ChannelDestination(channel), addressed=mentioned,
                               earlier=self._earlier(channel, before=message))
            return
        if not mentioned:
            return
        if not text:  # only a mention: a usage hint in the channel, no thread
            await self._answer(key, incoming, ChannelDestination(channel))
            return
        key = ConversationKey(key.platform, key.workspace, key.channel, str(message.id))
        await self._answer(key, incoming, NewThreadDestination(message, thread_name(text)))

    def _earlier(self, thread: discord.Thread, before: discord.abc.Snowflake | None,
                 skip: int | None = None) -> EarlierLoader:
        """A loader of the thread's earlier messages, for the chat service to call when the
        bot joins the thread mid-way (and only then)."""
        me_id = self.bot.user.id if self.bot.user else 0

        async def load() -> list[tuple[Turn, str | None, str | None]]:
            return await read_thread_history(thread, before, me_id, skip)

        return load

    async def _answer(self, key: ConversationKey, incoming: IncomingMessage,
                      destination: Destination, *, addressed: bool = True,
                      earlier: EarlierLoader | None = None) -> Outcome | None:
        """The one place a Discord event reaches the chat service."""
        sink = DiscordReply(destination, tag=incoming.delivery_key,
                            locate=self.bot.partial_message)
        try:
            return await self.chat.handle(key, incoming, sink, addressed=addressed,
                                          earlier=earlier)
        except Exception:
            log.exception("%s: could not answer message %s", key, incoming.delivery_key)
            await sink.fail(RinnaError.user_message)
            return None
        finally:
            sink.stop_typing()

    # --- application commands
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
            log.warning("/ask %s: %s", interaction.id, _describe(exc), exc_info=exc)
        except Exception:
            log.exception("/ask %s: could not handle it", interaction.id)
            await _tell_failure(interaction)

    async def _ask(self, interaction: discord.Interaction, question: str) -> None:
        channel = interaction.channel
        key = conversation_key(channel, interaction.guild_id)
        text = question.strip()
        incoming = IncomingMessage(text, str(interaction.id), str(interaction.user.id))
        if isinstance(channel, discord.Thread):
            await self._answer(key, incoming, InteractionDestination(interaction),
                               earlier=self._earlier(channel, before=None))
            return
        if interaction.guild_id is None or not clean_text(text).strip():
            await self._answer(key, incoming, InteractionDestination(interaction))
            return
        original = await interaction.original_response()
        thread = await self._open_thread(original, thread_name(text))
        key = ConversationKey(key.platform, key.workspace, key.channel, str(original.id))
        await self._answer(key, incoming, InteractionDestination(interaction, then=thread))

    @staticmethod
    async def _open_thread(message: discord.Message, name: str) -> discord.Thread | None:
        try:
            return await message.create_thread(name=name,
                                               auto_archive_duration=THREAD_ARCHIVE_MINUTES)
        except DELIVERY_ERRORS as exc:
            log.warning("could not open a thread on the /ask answer %s (%s)",
                        message.id, _describe(exc))
            return None

    # --- the message context menu 「rinna に聞く」
    async def ask_about(self, interaction: discord.Interaction,
                        message: discord.Message) -> None:
        """Answer about `message` in a thread on it (the thread it is in, if any), the
        message as the question; the person who pressed is told where, ephemerally."""
        if await self._refuse(interaction):
            return
        if not self.chat.first_sight(PLATFORM, str(interaction.id)):  # a replayed interaction
            return
        try:
            # Acknowledged first: Discord refuses a second response to the same press, so a
            # replay that slipped past the check above ends here.
            await interaction.response.defer(ephemeral=True, thinking=True)
            await self._ask_about(interaction, message)
        except DELIVERY_ERRORS as exc:
            log.warning("%s %s: %s", ASK_ABOUT, interaction.id, _describe(exc), exc_info=exc)
        except Exception:
            log.exception("%s %s: could not handle it", ASK_ABOUT, interaction.id)
            await _tell_failure(interaction)

    async def _ask_about(self, interaction: discord.Interaction,
                         message: discord.Message) -> None:
        me_id = self.bot.user.id if self.bot.user else 0
        text = readable_text(message, me_id)
        if not clean_text(text).strip():
            await interaction.edit_original_response(content=ASK_ABOUT_UNREADABLE)
            return
        incoming = IncomingMessage.asked_about(text, str(interaction.id),
                                               writer=str(message.author.id),
                                               asker=str(interaction.user.id),
                                               message=str(message.id))
        channel = interaction.channel
        guild_id = interaction.guild_id
        if guild_id is None or isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
            key = conversation_key(channel, None)
            await interaction.edit_original_response(content=ASK_ABOUT_HERE)
            await self._answer(key, incoming, ChannelDestination(channel))
            return
        if isinstance(channel, discord.Thread):  # also a forum post: answer in it
            key = conversation_key(channel, guild_id)
            await interaction.edit_original_response(
                content=ASK_ABOUT_WHERE.format(where=channel.mention))
            await self._answer(key, incoming, ChannelDestination(channel),
                               earlier=self._earlier(channel, before=message, skip=message.id))
            return
        # A channel message: the thread on it (opened now, or the one people already use).
        base = conversation_key(channel, guild_id)
        key = ConversationKey(base.platform, base.workspace, base.channel, str(message.id))
        thread = await self._thread_on(message, thread_name(text))
        target: discord.abc.Messageable = thread if thread is not None else channel
        await interaction.edit_original_response(
            content=ASK_ABOUT_WHERE.format(where=f"<#{getattr(target, 'id', channel.id)}>"))
        earlier = (self._earlier(thread, before=None, skip=message.id)
                   if isinstance(thread, discord.Thread) else None)
        await self._answer(key, incoming, ChannelDestination(target), earlier=earlier)

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
                        message.id, _describe(exc))
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
            sink = DiscordReply(InteractionDestination(interaction), tag=str(interaction.id),
                                locate=self.bot.partial_message)
            try:
                await self.chat.reset(conversation_key(channel, interaction.guild_id),
                                      str(interaction.id), sink=sink, notice=RESET_DONE,
                                      author=str(interaction.user.id))
            finally:
                sink.stop_typing()
        except DELIVERY_ERRORS as exc:
            log.warning("/reset %s: %s", interaction.id, _describe(exc), exc_info=exc)
        except Exception:
            log.exception("/reset %s: could not handle it", interaction.id)
            await _tell_failure(interaction)

    @app_commands.command(name="help", description="rinna の使い方を表示します")
    async def help(self, interaction: discord.Interaction) -> None:
        if await self._refuse(interaction):
            return
        try:
            await interaction.response.send_message(HELP_MESSAGE, ephemeral=True)
        except DELIVERY_ERRORS as exc:
            log.warning("/help %s: %s", interaction.id, _describe(exc), exc_info=exc)


class MessageEditsCog(commands.Cog):
    """Deleting or editing a message on Discord does the same to the turn stored from it, so
    the next prompt no longer holds what the person took back."""

    def __init__(self, bot: RinnaDiscordBot) -> None:
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
        try:
            await self.bot.chat.message_edited(PLATFORM, str(payload.message_id),
                                              readable_text(message, me.id))
        except Exception:  # the error boundary: logged, the client keeps running
            log.exception("message %s: could not apply its edit to the history",
                          payload.message_id)

    async def _deleted(self, message_ids: list[int]) -> None:
        for message_id in message_ids:
            try:
                await self.bot.chat.message_deleted(PLATFORM, str(message_id))
            except Exception:
                log.exception("message %s: could not delete it from the history", message_id)


# ----- the bot -------------------------------------------------------------------------------


def bot_intents(message_content: bool = True) -> discord.Intents:
    """Guild and DM messages; Message Content for unmentioned thread messages."""
    intents = discord.Intents.default()
    intents.message_content = message_content
    return intents


class RinnaDiscordBot(commands.Bot):
    """The Discord client. Takes the core services; builds nothing at import time."""

    def __init__(self, chat: ChatService, settings: Settings, *, message_content: bool = True,
                 status: StatusSource | None = None, **options: Any) -> None:
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, help_command=None,
                         intents=bot_intents(message_content), **options)
        self.chat = chat
        self.settings = settings
        self.policy = AccessPolicy.from_settings(settings)
        self.status_source = status  # what /status shows (discord.Client.status is presence)
        self.community = chat.community  # /rinna-config (None: settings are the host's only)

    async def setup_hook(self) -> None:
        await self.add_cog(ChatCog(self))
        await self.add_cog(MessageEditsCog(self))
        await self.add_cog(StatusCog(self))
        await self.add_cog(ConfigCog(self))
        # One persistent view receives the buttons of every answer, also of answers posted
        # before this process started (stable custom_ids; nothing per message is kept).
        self.add_view(ControlsView(AnswerControls(self)))
        try:
            synced = await self.tree.sync()
        except discord.HTTPException as exc:
            log.error("could not sync application commands (%s %s); /ask, /reset and /help may "
                      "be missing or stale", exc.status, exc.code, exc_info=exc)
        else:
            log.info("synced %d application commands", len(synced))

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: the cog answers messages."""

    async def refuse(self, interaction: discord.Interaction) -> bool:
        """True (after telling the user, ephemerally) when the access policy refuses this
        interaction (a command or a button) here."""
        request = access_request(interaction.channel, interaction.guild_id, interaction.user)
        denial = self.policy.check(request)
        if denial is None:
            return False
        log.debug("user %s in %s/%s refused: %s", request.user, request.workspace,
                  request.channel, denial)
        try:
            await interaction.response.send_message(DENIED_MESSAGE, ephemeral=True)
        except DELIVERY_ERRORS as exc:
            log.warning("interaction %s: could not refuse it: %s", interaction.id,
                        _describe(exc))
        return True

    def partial_message(self, channel_id: int, message_id: int) -> discord.PartialMessage:
        """A message of this bot's by ids, to edit without fetching it."""
        return self.get_partial_messageable(channel_id).get_partial_message(message_id)

    def reply_in(self, key: ConversationKey, tag: str) -> DiscordReply:
        """A new reply in a conversation's thread, DM or channel (a regenerated answer,
        tagged with the press; also a reply resumed after a restart)."""
        channel = self.get_partial_messageable(int(key.thread or key.channel))
        return DiscordReply(ChannelDestination(channel), tag=tag, locate=self.partial_message)

    @property
    def connected(self) -> bool:
        """For the health check: logged in and the gateway websocket open."""
        return self.is_ready() and not self.is_closed() and self.ws is not None and self.ws.open

    def recovery_sink(self, delivery: Delivery) -> DiscordReply:
        """A sink for a message taken on before a restart: it edits the stored placeholder
        (or posts in the conversation's thread, DM or channel when there is none)."""
        return self.reply_in(delivery.key, delivery.delivery_key)

    async def on_ready(self) -> None:
        log.info("Discord: logged in as %s (%s) in %d servers",
                 self.user, self.user.id if self.user else "?", len(self.guilds))
        for guild in list(self.guilds):
            await self._leave_if_not_allowed(guild, "at start-up")

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self._leave_if_not_allowed(guild, "on joining")

    async def on_guild_available(self, guild: discord.Guild) -> None:
        # discord.py reports a GUILD_CREATE carrying `unavailable: false` as this, not as a join
        await self._leave_if_not_allowed(guild, "on joining")

    async def _leave_if_not_allowed(self, guild: discord.Guild, when: str) -> None:
        if self.policy.workspace_allowed(str(guild.id)):
            return
        log.warning("Discord: leaving server %s (%s) %s: it is not in ALLOWED_WORKSPACES",
                    guild.name, guild.id, when)
        try:
            await guild.leave()
        except DELIVERY_ERRORS as exc:
            log.warning("Discord: could not leave server %s: %s", guild.id, _describe(exc))

    async def start(self, token: str, *, reconnect: bool = True) -> None:
        """Run until closed. Refusals that only the person running the bot can fix end it with
        a ConfigError naming what to change (`rinna-bot run` prints it as one line)."""
        try:
            await super().start(token, reconnect=reconnect)
        except discord.PrivilegedIntentsRequired:
            raise ConfigError(
                "Discord refused the Message Content intent: enable it in the Developer Portal "
                "(Bot > Privileged Gateway Intents), or set DISCORD_MESSAGE_CONTENT=false"
            ) from None
        except discord.LoginFailure:
            raise ConfigError("DISCORD_TOKEN: Discord rejected the bot token; copy it again "
                              "from the Developer Portal (Bot > Reset Token)") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # No network, DNS or a proxy in the way: one line, like Slack, not a traceback.
            raise DiscordConnectError(
                f"Discord could not be reached ({_describe(exc)}); check the network") from None


class DiscordConnectError(RinnaError):
    """Discord could not be reached at start."""


def build_discord_bot(chat: ChatService, settings: Settings, *,
                      status: StatusSource | None = None, **options: Any) -> RinnaDiscordBot:
    """The bot `rinna-bot run` starts. `status` is what `/status` shows (None: it says it
    cannot tell). `options` go to RinnaDiscordBot / discord.py's client
    (`message_content=False` runs without the privileged intent; tests lower timeouts)."""
    options.setdefault("message_content", settings.discord_message_content)
    return RinnaDiscordBot(chat, settings, status=status, **options)


__all__ = [
    "ChatCog",
    "DiscordReply",
    "RinnaDiscordBot",
    "build_discord_bot",
    "conversation_key",
    "readable_text",
    "thread_name",
]
