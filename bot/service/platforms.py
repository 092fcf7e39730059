"""The platforms `rinna-bot run` can start: one entry each, the only place that names them.

An entry says which adapter module builds it, whether its credentials are set, how `doctor`
names it, what an operator sets to configure it, and which call asks the platform who the
tokens are (`run` while the model loads, `doctor`). A module listed here has
`build_platform(chat, settings, status) -> Platform | None` (None: its credentials are not set).
Modules are imported only when `run` starts them or a check asks, so `--help`, `doctor
--offline` and `chat` do not load discord.py or slack-bolt."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.core.chat import ChatService
    from bot.config import Settings
    from bot.ports.platform import Platform
    from bot.core.status import StatusSource


@dataclass(frozen=True, slots=True)
class PlatformEntry:
    module: str  # the adapter module with build_platform
    configured: Callable[[Settings], bool]  # its credentials are set
    shown: Callable[[Settings], str]  # how `doctor` names it when it will start
    needs: str  # what to set to configure it (doctor's hint when none is)
    credentials: str  # "module:function": async (settings) -> one line, or raises
    # "module:function": async (settings) -> [(ok, line)], doctor's fuller report (a token's
    # missing scopes as a failing line); "": doctor shows the identity call's line
    findings: str = ""


def _slack_shown(settings: Settings) -> str:
    return ("Slack (Socket Mode)" if settings.slack_app_token is not None
            else f"Slack (HTTP on port {settings.slack_port})")


PLATFORMS: tuple[PlatformEntry, ...] = (
    PlatformEntry("adapters.discord_platform", lambda settings: settings.discord_enabled,
                  lambda settings: "Discord", "DISCORD_TOKEN",
                  "adapters.credentials:check_discord"),
    PlatformEntry("adapters.slack_service", lambda settings: settings.slack_enabled,
                  _slack_shown, "SLACK_BOT_TOKEN with SLACK_APP_TOKEN or SLACK_SIGNING_SECRET",
                  "adapters.credentials:check_slack", "adapters.credentials:slack_findings"),
)


def configured_platforms(settings: Settings) -> list[PlatformEntry]:
    """The listed platforms whose credentials are set, in the listed order."""
    return [entry for entry in PLATFORMS if entry.configured(settings)]


def any_configured(settings: Settings) -> bool:
    """Whether `run` has a platform to start (else it is the terminal chat)."""
    return bool(configured_platforms(settings))


def how_to_configure() -> str:
    """What an operator sets to have `run` start a platform."""
    return "set " + ", or ".join(entry.needs for entry in PLATFORMS)


async def ask_credentials(entry: PlatformEntry, settings: Settings) -> str:
    """The platform's identity call: one line on success; ConfigError for rejected tokens,
    adapters.credentials.PlatformUnreachable when it cannot be reached."""
    module, _, function = entry.credentials.partition(":")
    check = getattr(importlib.import_module(module), function)
    return str(await check(settings))


async def credential_findings(entry: PlatformEntry,
                              settings: Settings) -> list[tuple[bool, str]]:
    """What `doctor` shows of a platform's tokens: (ok, line) pairs; raises as
    `ask_credentials`."""
    if not entry.findings:
        return [(True, await ask_credentials(entry, settings))]
    module, _, function = entry.findings.partition(":")
    check = getattr(importlib.import_module(module), function)
    return [(bool(ok), str(line)) for ok, line in await check(settings)]


def build_platforms(chat: ChatService, settings: Settings,
                    status: StatusSource | None) -> list[Platform]:
    """Every listed platform whose credentials are set, in the listed order."""
    built = (importlib.import_module(entry.module).build_platform(chat, settings, status)
             for entry in configured_platforms(settings))
    return [platform for platform in built if platform is not None]
