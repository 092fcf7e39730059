"""What `rinna-bot run` does with each platform, whatever it is (bot/service/platforms.py lists them).

A platform is built from settings and the chat service; `run` starts it, waits on `stopped`
(or a signal), then stops its intake, lets the chat service finish, and closes it. After a
restart, `ready` and `recovery_sink` let the chat service finish what the last process took on.
"""

from __future__ import annotations

from typing import Protocol

from bot.conversation import ReplySink
from bot.ports.records import Delivery


class Platform(Protocol):
    name: str  # the platform's name in conversation keys and metrics ("discord", "slack")

    @property
    def connected(self) -> bool:
        """For the health check: events can arrive now."""
        ...

    async def start(self) -> None:
        """Connect and begin taking events; returns once started (the platform's own work
        goes on in the background until `close`)."""
        ...

    async def ready(self) -> None:
        """Returns once recovery may start (sinks can reach the platform)."""
        ...

    async def stopped(self) -> None:
        """Returns (or raises what ended it) when the platform stops by itself."""
        ...

    async def stop_intake(self) -> None:
        """Take no new events; replies in flight can still be shown."""
        ...

    async def close(self) -> None: ...

    def recovery_sink(self, delivery: Delivery) -> ReplySink:
        """A sink for a message the last process took on and did not finish."""
        ...
