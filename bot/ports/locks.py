"""The conversation lock: one turn at a time per conversation, in arrival order.

A port, so that a database shared by several processes can lock with rows or advisory locks;
`InProcessLocks` is the implementation for one process (what SQLite's store uses).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from bot.conversation import ConversationKey


class ConversationLocks(Protocol):
    def hold(self, key: ConversationKey) -> AbstractAsyncContextManager[None]:
        """Held while one turn of conversation `key` is stored, imported or answered."""
        ...


class InProcessLocks:
    """One asyncio.Lock per conversation while anyone holds or waits for it (FIFO)."""

    def __init__(self) -> None:
        self._locks: dict[ConversationKey, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: ConversationKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """Conversations locked or waited for now (0 when idle: nothing leaks)."""
        return len(self._locks)
