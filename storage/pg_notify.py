"""Community settings changed by any replica reach every replica's cache: the store NOTIFYs
`rinna_settings` with the changed scope after the change commits, and each store that has
listeners (bot/core/community.py registers one) LISTENs on a connection of its own pool.

A replica that was not listening while a change was made (its listening connection lost in a
server restart, until it reconnects) keeps the old value cached until that scope changes again
or the process restarts; the listening connection is taken again after a loss.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from bot.ports.community import Scope

log = logging.getLogger(__name__)

CHANNEL = "rinna_settings"


def payload(scope: Scope) -> str:
    return json.dumps([scope.platform, scope.workspace, scope.channel, scope.thread])


class ChangeNotices:
    def __init__(self, acquire: Callable[[], Awaitable[asyncpg.Connection]],
                 release: Callable[[asyncpg.Connection], Awaitable[None]],
                 deliver: Callable[[Scope], None]) -> None:
        self._acquire = acquire
        self._release = release
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        """Begin listening (once), when there is an event loop to listen on."""
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): this process's changes only
        self._task = loop.create_task(self._listen())

    async def _listen(self) -> None:
        connection = await self._acquire()
        self._connection = connection
        await connection.add_listener(CHANNEL, self._notified)
        connection.add_termination_listener(self._lost)
        self.listening.set()

    def _notified(self, connection: object, pid: int, channel: str, text: str) -> None:
        try:
            platform, workspace, channel_id, thread = json.loads(text)
        except (ValueError, TypeError):
            log.warning("ignored a malformed settings notice")
            return
        self._deliver(Scope(str(platform), str(workspace), str(channel_id), str(thread)))

    def _lost(self, connection: object) -> None:
        self.listening.clear()
        self._connection = None
        self._task = None
        self.start()  # listen again (the store waits for the server)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.remove_termination_listener(self._lost)
            await connection.remove_listener(CHANNEL, self._notified)
            await self._release(connection)
