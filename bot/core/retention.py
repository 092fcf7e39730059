"""RETENTION_DAYS: stored turns older than that are deleted, at start and then once a day.

A background task of the running bot (`rinna-bot run` / `chat`). The clock and the sleep are
passed in, so tests move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from bot.ports.store import PrivacyStore

log = logging.getLogger(__name__)

DAY_S = 86_400.0


class RetentionSweeper:
    def __init__(self, store: PrivacyStore, days: int, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 every_s: float = DAY_S) -> None:
        self.store = store
        self.days = days
        self.every_s = every_s
        self._clock = clock
        self._sleep = sleep

    async def sweep(self) -> int:
        """Delete every turn stored more than `days` days ago; returns how many."""
        deleted = await self.store.delete_older_than(self._clock() - self.days * DAY_S)
        if deleted:
            log.info("deleted %d stored turns older than RETENTION_DAYS=%d", deleted, self.days)
        return deleted

    async def run(self) -> None:
        """Sweep every `every_s` seconds until cancelled; a failed sweep is logged and retried
        at the next one."""
        while True:
            await self._sleep(self.every_s)
            await self.sweep_logged()

    async def sweep_logged(self) -> None:
        """`sweep`, with a failure (a locked or broken database) logged instead of raised."""
        try:
            await self.sweep()
        except Exception:
            log.exception("RETENTION_DAYS: could not delete old turns; trying again later")


@contextlib.asynccontextmanager
async def retention(store: PrivacyStore, days: int | None, *,
                    clock: Callable[[], float] = time.time,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                    ) -> AsyncIterator[RetentionSweeper | None]:
    """While inside: old turns are deleted now (before anything is served) and then daily.
    `days` None (RETENTION_DAYS unset) keeps everything."""
    if days is None:
        yield None
        return
    sweeper = RetentionSweeper(store, days, clock=clock, sleep=sleep)
    await sweeper.sweep_logged()
    task = asyncio.create_task(sweeper.run(), name="retention")
    try:
        yield sweeper
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
