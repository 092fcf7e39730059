"""Where a Discord reply goes (a channel, a new thread, an interaction) and the reply sink:
placeholder, edits, split pieces, buttons, typing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import discord

from adapters.discord_controls import controls_view, message_ref
from adapters.discord_files import superseded_content
from bot.conversation import RETIRED
from bot.errors import RinnaError
from bot.core.reply import MessageReply

log = logging.getLogger(__name__)

DELIVERY_ERRORS: tuple[type[BaseException], ...] = (
    discord.HTTPException, aiohttp.ClientError, TimeoutError)
THREAD_ARCHIVE_MINUTES = 1440
TYPING_EVERY_S = 8.0  # Discord shows the indicator for about 10 s per trigger


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
                        self.message.id, describe(exc))
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


async def tell_failure(interaction: discord.Interaction) -> None:
    """End a deferred command with the generic Japanese error (it would spin until expiry)."""
    try:
        await interaction.edit_original_response(content=RinnaError.user_message)
    except DELIVERY_ERRORS as exc:
        log.warning("interaction %s: could not report the failure: %s", interaction.id,
                    describe(exc))


def describe(exc: BaseException) -> str:
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

    async def supersede(self, ref: str, text: str, notice: str) -> None:
        """The answer at `ref` was to words since edited: the notice, its text struck
        through, 👍/👎 only."""
        if (message := self.restore(ref)) is None:
            return
        await message.edit(content=superseded_content(text, notice, self.limit),
                           view=controls_view(RETIRED))

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
                 getattr(channel, "id", "?"), describe(exc))


class EphemeralAnswer:
    """A one-message reply only the person who used an application command sees (/help,
    /status): the interaction's response, sent once the text is final (`deferred`: the
    response was deferred, so the text fills it)."""

    def __init__(self, interaction: discord.Interaction, *, deferred: bool = False) -> None:
        self.interaction = interaction
        self.deferred = deferred

    async def start(self) -> None:
        return None

    async def waiting(self, position: int) -> None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        if self.deferred:
            await self.interaction.edit_original_response(content=text)
        else:
            await self.interaction.response.send_message(text, ephemeral=True)

    async def fail(self, message: str) -> None:
        await self.finish(message)
