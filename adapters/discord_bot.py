"""Discord adapter: the client. discord.py events are parsed into the front door's terms by
the cogs (discord_cogs.py) and go through `FrontDoor.receive`, which owns access, redelivery,
reset/help and the chat service's answer; the adapter decides only what Discord decides:
which messages are for the bot, where the answer goes, how it looks.

- A mention in a channel opens a public thread on that message (the thread's id is the
  message's id, so the conversation key is known before the thread exists) and answers there.
- Messages in a thread the bot takes part in need no mention. In a thread the bot does not
  follow yet, the front door reads the thread's earlier messages (through the reader the cog
  hands it) before answering a mention.
- Every reply message is sent with a nonce made from the delivery key (Discord then returns
  the first message for a retried send instead of creating a second); the placeholder's
  channel/message id is kept, so a restart edits it (`RinnaDiscordBot.recovery_sink`).
- A DM is one conversation. `/ask`, `/reset` and `/help` are application commands, synced in
  `setup_hook`.

Parsing is in discord_parse.py, destinations and the sink in discord_reply.py, the listeners
and commands in discord_cogs.py, the buttons and /status in discord_controls.py.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import discord
from discord.ext import commands

from adapters.discord_cogs import (
    ASK_ABOUT,
    ASK_ABOUT_HERE,
    ASK_ABOUT_UNREADABLE,
    ASK_ABOUT_WHERE,
    HELP_MESSAGE,
    RESET_WHERE,
    ChatCog,
    StatusCog,
)
from adapters.discord_config import ConfigCog
from adapters.discord_controls import AnswerControls, ControlsView
from adapters.discord_edits import MessageEditsCog
from adapters.discord_files import discord_fetcher
from adapters.discord_parse import (
    MAX_TEXT_CHARS,
    access_request,
    conversation_key,
    readable_text,
    thread_name,
)
from adapters.discord_reply import DELIVERY_ERRORS, ChannelDestination, DiscordReply, describe
from adapters.discord_summary import SummaryCog
from bot.config import Settings
from bot.conversation import ConversationKey
from bot.core.access import DENIED_MESSAGE, AccessPolicy
from bot.core.chat import ChatService
from bot.core.front_door import FrontDoor
from bot.core.notices import RESET_DONE
from bot.errors import ConfigError, RinnaError
from bot.ports.records import Delivery

log = logging.getLogger(__name__)


# ----- the bot -------------------------------------------------------------------------------


def bot_intents(message_content: bool = True) -> discord.Intents:
    """Guild and DM messages; Message Content for unmentioned thread messages."""
    intents = discord.Intents.default()
    intents.message_content = message_content
    return intents


class RinnaDiscordBot(commands.Bot):
    """The Discord client over the front door the service built (shared with every other
    platform); builds nothing at import time."""

    def __init__(self, front: FrontDoor, settings: Settings, *, message_content: bool = True,
                 **options: Any) -> None:
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, help_command=None,
                         intents=bot_intents(message_content), **options)
        self.front = front
        self.chat: ChatService = front.chat
        self.policy: AccessPolicy = front.policy
        self.settings = settings
        self.files = discord_fetcher(settings)  # downloads attachments (None: not read)

    async def setup_hook(self) -> None:
        await self.add_cog(ChatCog(self))
        await self.add_cog(MessageEditsCog(self))
        await self.add_cog(StatusCog(self))
        await self.add_cog(SummaryCog(self, self.settings.summary_channel_messages))
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
        if self.front.permits([request]):
            return False
        try:
            await interaction.response.send_message(DENIED_MESSAGE, ephemeral=True)
        except DELIVERY_ERRORS as exc:
            log.warning("interaction %s: could not refuse it: %s", interaction.id,
                        describe(exc))
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
            log.warning("Discord: could not leave server %s: %s", guild.id, describe(exc))

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
                f"Discord could not be reached ({describe(exc)}); check the network") from None


class ShardedRinnaDiscordBot(RinnaDiscordBot, commands.AutoShardedBot):
    """The bot on several gateway connections (DISCORD_SHARD_COUNT): one websocket per shard
    this replica runs (DISCORD_SHARD_IDS, else all). Discord sends each server's events to
    shard (server id >> 22) % count, and DMs to shard 0 only."""

    @property
    def connected(self) -> bool:
        """Logged in and every shard's websocket open."""
        shards = self.shards
        return (self.is_ready() and not self.is_closed() and bool(shards)
                and not any(shard.is_closed() for shard in shards.values()))


class DiscordConnectError(RinnaError):
    """Discord could not be reached at start."""


def build_discord_bot(front: FrontDoor, settings: Settings, **options: Any) -> RinnaDiscordBot:
    """The bot `rinna-bot run` starts, over the service's front door. `options` go to
    RinnaDiscordBot / discord.py's client (`message_content=False` runs without the privileged
    intent; tests lower timeouts)."""
    options.setdefault("message_content", settings.discord_message_content)
    if settings.discord_shard_count is None:
        return RinnaDiscordBot(front, settings, **options)
    options.setdefault("shard_count", settings.discord_shard_count)
    if settings.discord_shard_ids:
        options.setdefault("shard_ids", list(settings.discord_shard_ids))
    return ShardedRinnaDiscordBot(front, settings, **options)


__all__ = [
    "ASK_ABOUT",
    "ASK_ABOUT_HERE",
    "ASK_ABOUT_UNREADABLE",
    "ASK_ABOUT_WHERE",
    "HELP_MESSAGE",
    "MAX_TEXT_CHARS",
    "RESET_DONE",
    "RESET_WHERE",
    "ChatCog",
    "ConversationKey",
    "MessageEditsCog",
    "DiscordReply",
    "RinnaDiscordBot",
    "ShardedRinnaDiscordBot",
    "build_discord_bot",
    "conversation_key",
    "readable_text",
    "thread_name",
]
