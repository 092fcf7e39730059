"""The platforms `rinna-bot run` can start: one line each, the adapter module and whether its
credentials are set. A module listed here has `build_platform(chat, settings, status) ->
Platform | None` (None: its credentials are not set). Imported only when `run` starts them,
so `--help`, `doctor` and `chat` do not load discord.py or slack-bolt."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.chat import ChatService
    from bot.config import Settings
    from bot.ports.platform import Platform
    from bot.status import StatusSource

PLATFORMS: tuple[tuple[str, Callable[[Settings], bool]], ...] = (
    ("adapters.discord_platform", lambda settings: settings.discord_enabled),
    ("adapters.slack_service", lambda settings: settings.slack_enabled),
)


def any_configured(settings: Settings) -> bool:
    """Whether `run` has a platform to start (else it is the terminal chat)."""
    return any(configured(settings) for _, configured in PLATFORMS)


def build_platforms(chat: ChatService, settings: Settings,
                    status: StatusSource | None) -> list[Platform]:
    """Every listed platform whose credentials are set, in the listed order."""
    built = (importlib.import_module(module).build_platform(chat, settings, status)
             for module, configured in PLATFORMS if configured(settings))
    return [platform for platform in built if platform is not None]
