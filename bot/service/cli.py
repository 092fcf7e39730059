"""The `rinna-bot` command: `run` (every platform), `chat` (the terminal), `demo`, `download`,
`doctor`.

Objects are built here, in order, and passed in: settings, the database, the generator (one
model, one worker thread), the chat service, then each platform. Start-up failures print one
line naming what to set and exit with the contract's code (bot/service/startup.py: 2 for what the
operator must fix, 1 for what a restart may fix). `run` asks each platform whether its token is
accepted while the model loads, so a rejected token stops the start in seconds.

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import (
    Settings,
    default_log_file,
    load_settings,
    log_level_from_environment,
    unknown_keys,
)
from bot.errors import RinnaError
from bot.service.assembly import Core, open_core
from bot.service.logs import setup_logging
from bot.service.platforms import any_configured
from bot.service.startup import EXIT_CONFIG, StartParts, check_credentials, exit_code

if TYPE_CHECKING:  # imported where used: `--help`, `--version` and `doctor` start fast
    from bot.core.chat import CrashHook
    from bot.ports.platform import Platform

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


async def serve(settings: Settings, command: str, crash_hook: CrashHook | None = None,
                parts: StartParts = StartParts()) -> int:
    from bot.core.retention import retention

    async with contextlib.AsyncExitStack() as stack:
        # The platforms' identity calls run while the model loads (bot/service/startup.py).
        checks = asyncio.create_task(check_credentials(settings, parts) if command == "run"
                                     else _nothing(), name="credential-checks")
        stack.push_async_callback(_cancelled, checks)
        metrics = None
        if command == "run" and settings.metrics_port is not None:
            from bot.service.metrics import Metrics, MetricsServer

            metrics = Metrics()  # up before the model, so /healthz says "model not loaded"
            server = await MetricsServer(metrics, settings.metrics_host,
                                         settings.metrics_port).start()
            stack.push_async_callback(server.close)
        core = await stack.enter_async_context(
            open_core(settings, metrics, crash_hook, parts, checks))
        await checks  # loaded first: the answers are due before any platform starts
        await stack.enter_async_context(retention(core.store, settings.retention_days))
        platforms = any_configured(settings)
        if command == "chat" or not platforms:
            from adapters.console import run_console

            if command == "run":
                print(NO_PLATFORM_HINT, file=sys.stderr)
            return await run_console(core.front)
        await run_platforms(core)
        return 0


async def run_platforms(core: Core) -> None:
    """Run every configured platform until a signal arrives or one of them stops."""
    from bot.service.platforms import build_platforms

    settings = core.settings
    platforms = build_platforms(core.front, settings)
    started: list[Platform] = []
    tasks: list[asyncio.Task[object]] = []
    recoveries: list[asyncio.Task[object]] = []
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopped.set)
    tasks.append(asyncio.create_task(stopped.wait(), name="signal"))
    if core.status is not None:  # tokens per second over the last minute, for /status
        recoveries.append(asyncio.create_task(core.status.run(), name="status-sampler"))
    try:
        for platform in platforms:
            if core.metrics is not None:
                core.metrics.watch_platform(platform.name, _connected(platform))
            await platform.start()
            started.append(platform)
            tasks.append(asyncio.create_task(platform.stopped(), name=platform.name))
            # Redeliveries may arrive meanwhile: the chat service answers each message once.
            recoveries.append(asyncio.create_task(
                _recover(core, platform), name=f"{platform.name}-recovery"))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if (error := task.exception()) is not None:
                raise error
    finally:
        log.info("shutting down")
        for platform in started:  # no new events; the clients stay up for the replies
            await platform.stop_intake()
        await core.chat.shutdown(settings.shutdown_grace_s)
        for task in recoveries:
            task.cancel()
        for result in await asyncio.gather(*recoveries, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("recovery failed", exc_info=result)
        for platform in reversed(started):
            await platform.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _connected(platform: Platform) -> Callable[[], bool]:
    """The health check's question for one platform."""
    return lambda: platform.connected


async def _recover(core: Core, platform: Platform) -> None:
    """At start, what an earlier run left unanswered. With replicas on one PostgreSQL, then on
    and on: what a replica that died left, once its leases run out (LEASE_S)."""
    await platform.ready()
    every = min(core.settings.lease_s / 4, 2.0)  # a dead one's answers: resumed by LEASE_S + 2 s
    # guarded like every later sweep: a database away at start must not end the sweeping
    await _sweep(core, platform, every)
    if not core.chat.replicas.shared:
        return
    sweeps: set[asyncio.Task[None]] = set()
    try:
        while not core.chat.closing:
            await asyncio.sleep(every)  # a sweep's period, not a synchronisation
            # each sweep runs on its own: answers it takes over are written while the next
            # sweeps look for more (a lease keeps two sweeps off one answer)
            sweep = asyncio.create_task(_sweep(core, platform, every))
            sweeps.add(sweep)
            sweep.add_done_callback(sweeps.discard)
    finally:
        for sweep in list(sweeps):
            sweep.cancel()


async def _sweep(core: Core, platform: Platform, every: float) -> None:
    try:
        await core.chat.recover(platform.name, platform.recovery_sink,
                                max_age_s=core.settings.recover_max_age_s)
    except RinnaError as exc:  # the database away for a while: the next sweep tries again
        log.warning("%s: taking over unfinished answers failed (%s); trying again in %.0f s",
                    platform.name, type(exc).__name__, every)
    except Exception:  # a driver's raw error: logged with its trace; the next sweep runs on
        log.exception("%s: taking over unfinished answers failed unexpectedly; trying again "
                      "in %.0f s", platform.name, every)


def private_command(settings: Settings, command: str, user: str, platform: str | None) -> int:
    """`forget` / `export` on DATABASE_PATH (works while the bot runs; loads no model)."""
    from bot.service.privacy import export_user, forget_user

    try:
        if command == "export":
            asyncio.run(export_user(settings.database_path, user, platform, sys.stdout,
                                    settings.database_url))
        else:
            deleted = asyncio.run(forget_user(settings.database_path, user, platform,
                                              settings.database_url))
            print(f"rinna-bot: deleted {deleted} stored messages of user {user}", file=sys.stderr)
    except RinnaError as exc:  # DATABASE_PATH refused is a ConfigError: 2
        _say(exc)
        return exit_code(exc)
    return 0


async def _nothing() -> list[str]:
    return []


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def main(argv: list[str] | None = None, parts: StartParts = StartParts()) -> int:
    from bot.models import alias_table

    parser = argparse.ArgumentParser(
        prog="rinna-bot", description="The rinna chat bot for Discord, Slack and the terminal.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="models (MODEL=...; MODEL_ID, any hub id or local folder, wins when both are "
               "set):\n" + alias_table())
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("command", nargs="?", default="run",
                        choices=["run", "chat", "demo", "download", "doctor", "forget",
                                 "export", "export-gguf", "migrate-db"],
                        help="run: every platform with credentials set; chat: the terminal; "
                             "demo: the terminal chat on a tiny random model (no download); "
                             "download: fetch and check the model; doctor: what run will do; "
                             "forget/export --user ID: delete/print a person's messages; "
                             "export-gguf OUT.gguf: the model for llama.cpp; "
                             "migrate-db [--to URL]: copy DATABASE_PATH into PostgreSQL")
    parser.add_argument("--log-level", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log at this level on the terminal (chat and demo show answers "
                             "only otherwise, and log to LOG_FILE); overrides LOG_LEVEL")
    parser.add_argument("--offline", action="store_true",
                        help="doctor: skip the calls to Discord and Slack")
    parser.add_argument("out", nargs="?", help="export-gguf: the .gguf file to write")
    parser.add_argument("--dtype", choices=["f16", "f32"], default="f16", help="export-gguf")
    parser.add_argument("--user", help="forget, export: the person's Discord or Slack user id")
    parser.add_argument("--to", metavar="URL", help="migrate-db: the PostgreSQL URL to copy "
                        "into (default: DATABASE_URL)")
    parser.add_argument("--platform", choices=["discord", "slack", "console"],
                        help="forget, export: only this platform's messages (default: all)")
    # Fault injection for the crash tests: the process kills itself (SIGKILL) the Nth time it
    # passes the named point (bot/core/chat.py `_point`). Never set in service.
    parser.add_argument("--crash-at", metavar="POINT[:N]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command in ("forget", "export") and not args.user:
        parser.error(f"{args.command} needs --user ID")
    if args.out is not None and args.command != "export-gguf":
        parser.error(f"{args.command} takes no file name (only export-gguf OUT.gguf does)")
    if args.command == "doctor":
        from bot.service.doctor import doctor

        return doctor(offline=args.offline)
    try:
        settings = load_settings()
    except RinnaError as exc:
        _say(exc)
        return EXIT_CONFIG
    platforms = any_configured(settings)
    terminal_chat = args.command in ("chat", "demo") or (args.command == "run" and not platforms)
    _setup_logging(settings, terminal_chat, args.log_level)
    for line in unknown_keys():  # a misspelt key would otherwise be silently ignored
        log.warning("%s", line)
    if args.command == "run" and not platforms and not _stdin_is_terminal():
        print(f"rinna-bot: {NO_PLATFORM_NO_TERMINAL}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "migrate-db":
        from bot.service.migrate_db import migrate_command

        return migrate_command(settings, args.to)
    if args.command in ("forget", "export"):
        return private_command(settings, args.command, args.user, args.platform)
    if args.command == "export-gguf":  # the model for llama.cpp (docs/llamacpp.md)
        from bot.service.gguf_export import export_command

        return export_command(settings, args.out, args.dtype)
    if args.command == "download":
        from bot.engine.download import download

        return download(settings)
    try:
        if args.command == "demo":
            from bot.service.demo import run_demo

            return run_demo(settings, lambda demo: serve(demo, "chat", parts=parts))
        return asyncio.run(serve(settings, args.command,
                                 _crash_hook(args.crash_at) if args.crash_at else None, parts))
    except RinnaError as exc:
        _say(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


def _say(error: RinnaError) -> None:
    """An error that ends the command: one `rinna-bot: ...` line per problem, no traceback."""
    for line in str(error).splitlines():
        print(f"rinna-bot: {line}", file=sys.stderr)


def _setup_logging(settings: Settings, terminal_chat: bool, asked: str | None) -> None:
    """`run` logs to stderr at LOG_LEVEL (journald, docker logs). The terminal chat shows
    answers only: its log goes to LOG_FILE and the screen gets warnings, unless a level is
    asked for on the command line (--log-level, or LOG_LEVEL in the environment, not .env)."""
    secrets = settings.secret_values()  # ENGINE_API_KEY and every other secret setting
    if not terminal_chat:
        setup_logging(asked or settings.log_level, secrets)
        return
    on_screen = asked or log_level_from_environment()
    where = None if (settings.log_file or "").strip().lower() == "off" else (
        Path(settings.log_file).expanduser() if settings.log_file else default_log_file())
    setup_logging(on_screen or settings.log_level, secrets, log_file=where,
                  screen_level=on_screen or "WARNING")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("rinna-bot")
    except PackageNotFoundError:
        return "(not installed)"


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
