"""Community settings changed by any replica reach every replica's cache: the store NOTIFYs
`rinna_settings` with the changed scope after the change commits, and each store that has
listeners (bot/core/community.py registers one) LISTENs on a connection of its own, opened
with `asyncpg.connect` beside the store's pool (as the stop channel does in
storage/pg_replicas.py): a LISTEN holds its connection for the life of the process, so taken
from the pool it would leave DATABASE_POOL_SIZE=1 with none for the store's calls.

When that connection is lost (the server restarting, failing over, down for however long),
the listener connects again, with a growing pause, until it is closed: it never gives up.
A change made while it was not listening is not heard: that replica keeps the old value
cached until that scope changes again or the process restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import asyncpg

from bot.ports.community import Scope

log = logging.getLogger(__name__)

CHANNEL = "rinna_settings"
# What a failed connection attempt raises while the server is away or refuses for a while.
_CANNOT_LISTEN = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def payload(scope: Scope) -> str:
    return json.dumps([scope.platform, scope.workspace, scope.channel, scope.thread])


class ChangeNotices:
    """LISTEN on a dedicated connection; `on_retry(error)` hears of each failed attempt
    (logs; tests wait on it rather than on time)."""

    def __init__(self, dsn: str, deliver: Callable[[Scope], None], *,
                 first_pause_s: float = 0.05, longest_pause_s: float = 1.0,
                 connect_timeout_s: float = 10.0,
                 on_retry: Callable[[BaseException], None] | None = None) -> None:
        self._dsn = dsn  # never logged: it holds the password
        self._deliver = deliver
        self._first_pause_s = first_pause_s
        self._longest_pause_s = longest_pause_s
        self._connect_timeout_s = connect_timeout_s
        self._on_retry = on_retry
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
        """Listen, and after every loss connect again, until cancelled by `close`."""
        pause = self._first_pause_s
        while True:
            lost = asyncio.Event()
            try:
                await self._connect(lost)
            except _CANNOT_LISTEN as exc:
                log.warning("the settings channel cannot listen (%s); trying again",
                            type(exc).__name__)
                if self._on_retry is not None:
                    self._on_retry(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._longest_pause_s)
                continue
            pause = self._first_pause_s
            self.listening.set()
            await lost.wait()
            self.listening.clear()
            self._connection = None
            log.warning("the settings channel's connection was lost; reconnecting")

    async def _connect(self, lost: asyncio.Event) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection

    def _notified(self, connection: object, pid: int, channel: str, text: str) -> None:
        try:
            platform, workspace, channel_id, thread = json.loads(text)
        except (ValueError, TypeError):
            log.warning("ignored a malformed settings notice")
            return
        self._deliver(Scope(str(platform), str(workspace), str(channel_id), str(thread)))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        connection, self._connection = self._connection, None
        self.listening.clear()
        if connection is not None and not connection.is_closed():
            await connection.close()
