"""Discord events as the front door's terms: conversation keys, readable text, who may ask,
and a thread's earlier messages (who wrote each; the front door sorts them into turns)."""

from __future__ import annotations

import re
from typing import Any

import discord

from adapters.discord_files import discord_attachments
from bot.core.access import AccessRequest
from bot.conversation import ConversationKey
from bot.core.front_events import EarlierMessage, Writer
from bot.core.notices import short_title

PLATFORM = "discord"
THREAD_NAME_CHARS = 50  # Discord allows 100; a short name reads better in the channel list
DEFAULT_THREAD_NAME = "rinna との会話"
HISTORY_SCAN_LIMIT = 200  # messages read back at most when joining a thread mid-way
MAX_TEXT_CHARS = 4000  # Discord's own limit (with Nitro): longer text is not Discord's

# Linear patterns (user text): a fixed-length id between fixed delimiters; runs of blanks.
_MENTION = re.compile(r"<(@[!&]?|#)([0-9]{15,21})>")
_SPACES = re.compile(r"[ \t]{2,}")
ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)

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


def earlier_message(message: discord.Message, me_id: int) -> EarlierMessage | None:
    """A thread message as the front door reads it: its text and who wrote it (None: not a
    message the bot answers or writes, or a thread starter Discord did not resolve)."""
    if (source := _history_source(message)) is None or source.type not in ANSWERED_TYPES:
        return None
    author = source.author
    if author.id == me_id:
        writer = Writer.BOT
    elif author.bot or author.system:
        writer = Writer.OTHER
    else:
        writer = Writer.PERSON
    person = writer is Writer.PERSON
    return EarlierMessage(readable_text(source, me_id), str(message.id), writer,
                          str(author.id) if person else None, str(source.id),
                          discord_attachments(source.attachments) if person else ())


async def read_thread_history(thread: discord.Thread, before: discord.abc.Snowflake | None,
                              me_id: int) -> list[EarlierMessage]:
    """The thread's recent messages before `before`, oldest first (the chat service keeps
    the newest that fit the prompt)."""
    picked: list[EarlierMessage] = []
    async for message in thread.history(limit=HISTORY_SCAN_LIMIT, before=before):
        if (item := earlier_message(message, me_id)) is not None:
            picked.append(item)
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

