"""The `rinna-bot` command: `run` (every configured platform) and `chat` (the terminal).

Objects are built here, in order, and passed in: settings, the database, the generator (one
model, one worker thread), the chat service, then each platform. Start-up failures print one
line naming what to set and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from bot.chat import ChatConfig, ChatService
from bot.config import Settings, load_settings
from bot.errors import RinnaError
from bot.generator import LocalGenerator, load_generator
from bot.logs import setup_logging
from storage.history import HistoryStore

log = logging.getLogger("rinna-bot")

NO_PLATFORM_HINT = (
    "No platform is configured, so this is the terminal chat. To connect Discord set "
    "DISCORD_TOKEN; for Slack set SLACK_BOT_TOKEN and SLACK_APP_TOKEN (Socket Mode) or "
    "SLACK_SIGNING_SECRET (HTTP). See README.md. (`rinna-bot chat` starts this chat directly.)"
)


@dataclass(frozen=True, slots=True)
class Core:
    settings: Settings
    store: HistoryStore
    generator: LocalGenerator
    chat: ChatService


@contextlib.asynccontextmanager
async def open_core(settings: Settings) -> AsyncIterator[Core]:
    store = await HistoryStore.open(settings.database_path)  # fails fast, before the model
    try:
        generator = await load_generator(settings)
        try:
            assert generator.tokenizer is not None
            chat = ChatService(store, generator, generator.tokenizer, ChatConfig(
                prompt_budget=settings.prompt_budget,
                stream_interval_s=settings.stream_interval_s))
            yield Core(settings, store, generator, chat)
        finally:
            await generator.aclose()
    finally:
        await store.close()


async def serve(settings: Settings, command: str) -> int:
    async with open_core(settings) as core:
        platforms = settings.discord_enabled or settings.slack_enabled
        if command == "chat" or not platforms:
            from adapters.console import run_console

            if command == "run":
                print(NO_PLATFORM_HINT, file=sys.stderr)
            return await run_console(core.chat)
        await run_platforms(core)
        return 0


async def run_platforms(core: Core) -> None:
    """Run every configured platform until a signal arrives or one of them stops."""
    settings = core.settings
    stops: list[Callable[[], Awaitable[None]]] = []
    tasks: list[asyncio.Task[None]] = []
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopped.set)
    tasks.append(asyncio.create_task(stopped.wait(), name="signal"))
    try:
        if settings.discord_enabled:
            from adapters.discord_bot import build_discord_bot

            assert settings.discord_token is not None
            bot = build_discord_bot(core.chat, settings)
            stops.append(bot.close)
            tasks.append(asyncio.create_task(
                bot.start(settings.discord_token.get_secret_value()), name="discord"))
        if settings.slack_enabled:
            from adapters.slack_app import build_slack_service

            slack = build_slack_service(core.chat, settings)
            await slack.start()
            stops.append(slack.close)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if (error := task.exception()) is not None:
                raise error
    finally:
        log.info("shutting down")
        for stop in reversed(stops):
            await stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rinna-bot", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "chat"], nargs="?", default="run",
                        help="run: every platform with credentials set; chat: the terminal")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except RinnaError as exc:
        print(f"rinna-bot: {exc}", file=sys.stderr)
        return 2
    secrets = [s.get_secret_value() for s in (settings.discord_token, settings.slack_bot_token,
               settings.slack_app_token, settings.slack_signing_secret) if s is not None]
    # The terminal chat keeps INFO lines off the conversation unless LOG_LEVEL asks for them.
    quiet = args.command == "chat" and "log_level" not in settings.model_fields_set
    setup_logging("WARNING" if quiet else settings.log_level, secrets)
    try:
        status = asyncio.run(serve(settings, args.command))
    except RinnaError as exc:
        print(f"rinna-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
