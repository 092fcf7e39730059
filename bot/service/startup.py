"""Start-up: the parts `run` starts with (swappable, for tests), the credential checks made
while the model loads, and the exit-code contract (docs/operations.md):

- 0: a clean stop (SIGTERM/SIGINT, /exit);
- 2: configuration the operator must fix (settings, paths, permissions, rejected tokens, a
  MODEL_ID directory that is missing or incomplete, no platform without a terminal):
  restarting cannot help (systemd's RestartPreventExitStatus=2);
- 1: anything transient (network, hub, a platform outage): a restart may help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bot.config import Settings
from bot.errors import ConfigError, RinnaError, StorageError, StoreUnreachable
from bot.service.platforms import PlatformEntry, ask_credentials, configured_platforms

if TYPE_CHECKING:
    from bot.engine.generator import Generator

log = logging.getLogger("rinna-bot")

EXIT_OK, EXIT_TRANSIENT, EXIT_CONFIG = 0, 1, 2

T = TypeVar("T")
Check = Callable[[PlatformEntry, Settings], Awaitable[str]]


def exit_code(error: BaseException) -> int:
    """The contract's code for an error that ended the start or the service."""
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    return EXIT_TRANSIENT


# SQLite's primary result codes for "another connection holds the lock" (extended codes such
# as SQLITE_BUSY_SNAPSHOT keep them in their low byte): another process is writing, which
# passes; a restart may help.
SQLITE_BUSY, SQLITE_LOCKED = 5, 6


def as_config_error(error: StorageError) -> RinnaError:
    """The database could not be opened at start: a path or a permission to fix (ConfigError,
    2), unless SQLite said the database is busy or locked by another connection (the error as
    it is: transient, 1), or the database server cannot be reached (StoreUnreachable: 1)."""
    if is_lock_contention(error) or isinstance(error, StoreUnreachable):
        return error
    return ConfigError(str(error))


def is_lock_contention(error: BaseException) -> bool:
    """Whether `error` was caused by a SQLite busy/locked result (read from the sqlite3 error
    it was raised while handling: the store re-raises it as StorageError)."""
    import sqlite3

    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, sqlite3.Error):
            code = getattr(cause, "sqlite_errorcode", None)
            return code is not None and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
        cause = cause.__cause__ or cause.__context__
    return False


async def _load_generator(settings: Settings) -> Generator:
    """The model (or the remote engine). What the operator must fix (a MODEL_ID directory
    that is missing or incomplete, a CUDA device that is not there) is raised as ConfigError
    by the loader itself (2); the hub out of reach stays ModelLoadError (1)."""
    from bot.engine.generator import load_generator
    from bot.service.logs import quiet_model_libraries

    log.info("model: %s (%s)", settings.model_id, settings.model_reason)
    if settings.engine_url is None:
        quiet_model_libraries()
    else:
        require_tokenizer_folder(settings.model_id)
    return await load_generator(settings)


def require_tokenizer_folder(model_id: str) -> None:
    """With ENGINE_URL only MODEL_ID's spiece.model is read: a MODEL_ID folder that is missing
    or lacks it is the operator's to fix (ConfigError, 2), like the local loader's."""
    from bot.service.download import names_a_path

    folder = Path(model_id).expanduser()
    if folder.is_dir():
        if not (folder / "spiece.model").is_file():
            raise ConfigError(f"MODEL_ID={model_id}: the directory has no spiece.model; copy "
                              "the model directory again")
    elif names_a_path(model_id):
        raise ConfigError(f"MODEL_ID={model_id}: no such directory; set MODEL_ID to a model "
                          "directory or a hub id like org/name")


@dataclass(frozen=True, slots=True)
class StartParts:
    """What start-up calls to load the model and to ask each platform who the tokens are.
    Tests pass their own (a loader that never finishes, say); `main()` uses these."""

    load_generator: Callable[[Settings], Awaitable[Any]] = _load_generator
    # a platform's identity call (bot/service/platforms.py lists the platforms and their calls)
    ask_credentials: Check = ask_credentials


def platform_checks(settings: Settings, parts: StartParts) -> list[Awaitable[str]]:
    return [parts.ask_credentials(entry, settings)
            for entry in configured_platforms(settings)]


async def check_credentials(settings: Settings, parts: StartParts) -> list[str]:
    """Every configured platform's identity call, at once. A rejected token raises its
    ConfigError; an unreachable platform is logged and left to the platform's own start
    (which retries or fails transiently). Returns one line per platform checked."""
    from adapters.credentials import PlatformUnreachable

    lines = []
    results = await asyncio.gather(*platform_checks(settings, parts), return_exceptions=True)
    for result in results:
        if isinstance(result, ConfigError):
            raise result
        if isinstance(result, PlatformUnreachable):
            log.warning("%s; starting anyway", result)
            lines.append(str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            log.info("%s", result)
            lines.append(result)
    return lines


async def while_checking(checks: asyncio.Task[Any], work: Awaitable[T]) -> T:
    """Run `work` (the model load) while `checks` run. If the checks fail first, `work` is
    cancelled and their error raised at once: a rejected token costs no model load."""
    job = asyncio.ensure_future(work)
    try:
        await asyncio.wait({checks, job}, return_when=asyncio.FIRST_COMPLETED)
        if checks.done() and not checks.cancelled() and checks.exception() is not None:
            raise checks.exception()  # type: ignore[misc]
        return await job
    except BaseException:
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
        raise
