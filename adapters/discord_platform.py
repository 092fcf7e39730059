"""Discord as a `Platform` for `rinna-bot run`: the bot client run in its own task."""

from __future__ import annotations

import asyncio

from adapters.discord_bot import DiscordReply, RinnaDiscordBot, build_discord_bot
from bot.core.chat import ChatService
from bot.config import Settings
from bot.ports.records import Delivery
from bot.core.status import StatusSource

NAME = "discord"


class DiscordPlatform:
    name = NAME

    def __init__(self, bot: RinnaDiscordBot, token: str) -> None:
        self.bot = bot
        self._token = token
        self._running: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.bot.connected

    async def start(self) -> None:
        self._running = asyncio.create_task(self.bot.start(self._token), name=NAME)

    async def ready(self) -> None:
        await self.bot.wait_until_ready()

    async def stopped(self) -> None:
        if self._running is not None:
            await asyncio.shield(self._running)

    async def stop_intake(self) -> None:
        """Discord's client stays up to show the replies in flight; `close` ends it."""

    async def close(self) -> None:
        await self.bot.close()
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)

    def recovery_sink(self, delivery: Delivery) -> DiscordReply:
        return self.bot.recovery_sink(delivery)


def build_platform(chat: ChatService, settings: Settings,
                   status: StatusSource | None) -> DiscordPlatform | None:
    """The Discord platform, or None when DISCORD_TOKEN is not set."""
    if not settings.discord_enabled or settings.discord_token is None:
        return None
    return DiscordPlatform(build_discord_bot(chat, settings, status=status),
                           settings.discord_token.get_secret_value())
