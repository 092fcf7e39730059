"""The `rinna-bot` command: `run` (every configured platform) and `chat` (the terminal).

Objects are built here, in order, and passed in: settings, the database, the generator (one
model, one worker thread), the chat service, then each platform. Start-up failures print one
line naming what to set and exit non-zero.

`run` answers every message exactly once through stops and crashes: at start it finishes the
messages a previous process took on but never answered (`ChatService.recover`); on SIGTERM or
SIGINT it stops taking events, lets answers in flight finish for SHUTDOWN_GRACE_S, and ends
the rest with a notice (they are answered after the restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from bot.chat import ChatConfig, ChatService, CrashHook
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
NO_PLATFORM_NO_TERMINAL = (
    "no platform is configured and stdin is not a terminal: set DISCORD_TOKEN or "
    "SLACK_BOT_TOKEN (see README.md), or use `rinna-bot chat` for a chat over a pipe"
)


@dataclass(frozen=True, slots=True)
class Core:
    settings: Settings
    store: HistoryStore
    generator: LocalGenerator
    chat: ChatService


@contextlib.asynccontextmanager
async def open_core(settings: Settings, crash_hook: CrashHook | None = None
                    ) -> AsyncIterator[Core]:
    store = await HistoryStore.open(settings.database_path)  # fails fast, before the model
    try:
        generator = await load_generator(settings)
        try:
            assert generator.tokenizer is not None
            chat = ChatService(store, generator, generator.tokenizer, ChatConfig(
                prompt_budget=settings.prompt_budget,
                stream_interval_s=settings.stream_interval_s), crash_hook=crash_hook)
            yield Core(settings, store, generator, chat)
        finally:
            await generator.aclose()
    finally:
        await store.close()


async def serve(settings: Settings, command: str, crash_hook: CrashHook | None = None) -> None:
    async with open_core(settings, crash_hook) as core:
        platforms = settings.discord_enabled or settings.slack_enabled
        if command == "chat" or not platforms:
            from adapters.console import run_console

            if command == "run":
                print(NO_PLATFORM_HINT, file=sys.stderr)
            await run_console(core.chat)
            return
        await run_platforms(core)


async def run_platforms(core: Core) -> None:
    """Run every configured platform until a signal arrives or one of them stops."""
    settings = core.settings
    stops: list[Callable[[], Awaitable[None]]] = []
    intake_stops: list[Callable[[], Awaitable[None]]] = []
    tasks: list[asyncio.Task[None]] = []
    recoveries: list[asyncio.Task[object]] = []
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

            async def recover_discord() -> None:
                await bot.wait_until_ready()
                await core.chat.recover("discord", bot.recovery_sink,
                                        max_age_s=settings.recover_max_age_s)

            recoveries.append(asyncio.create_task(recover_discord(), name="discord-recovery"))
        if settings.slack_enabled:
            from adapters.slack_app import build_slack_service

            slack = build_slack_service(core.chat, settings)
            await slack.start()
            stops.append(slack.close)
            intake_stops.append(slack.stop_intake)
            # Redeliveries may arrive meanwhile: the chat service answers each message once.
            recoveries.append(asyncio.create_task(core.chat.recover(
                "slack", slack.handlers.recovery_sink, max_age_s=settings.recover_max_age_s),
                name="slack-recovery"))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if (error := task.exception()) is not None:
                raise error
    finally:
        log.info("shutting down")
        for stop in intake_stops:  # no new events; the platforms' clients stay up for replies
            await stop()
        await core.chat.shutdown(settings.shutdown_grace_s)
        for task in recoveries:
            task.cancel()
        for result in await asyncio.gather(*recoveries, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("recovery failed", exc_info=result)
        for stop in reversed(stops):
            await stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rinna-bot", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "chat"], nargs="?", default="run",
                        help="run: every platform with credentials set; chat: the terminal")
    # Fault injection for the crash tests: the process kills itself (SIGKILL) the Nth time it
    # passes the named point (bot/chat.py `_point`). Never set in service.
    parser.add_argument("--crash-at", metavar="POINT[:N]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except RinnaError as exc:
        print(f"rinna-bot: {exc}", file=sys.stderr)
        return 2
    if (args.command == "run" and not (settings.discord_enabled or settings.slack_enabled)
            and not _stdin_is_terminal()):
        print(f"rinna-bot: {NO_PLATFORM_NO_TERMINAL}", file=sys.stderr)
        return 2
    secrets = [s.get_secret_value() for s in (settings.discord_token, settings.slack_bot_token,
               settings.slack_app_token, settings.slack_signing_secret) if s is not None]
    setup_logging(settings.log_level, secrets)
    try:
        asyncio.run(serve(settings, args.command,
                          _crash_hook(args.crash_at) if args.crash_at else None))
    except RinnaError as exc:
        print(f"rinna-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):  # closed
        return False


def _crash_hook(spec: str) -> CrashHook:
    point, _, nth = spec.partition(":")
    remaining = int(nth or "1")

    def hook(name: str) -> None:
        nonlocal remaining
        if name == point:
            remaining -= 1
            if remaining == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    sys.exit(main())
