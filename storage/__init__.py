"""Implementations of the store ports (bot/ports/store.py, bot/ports/locks.py).

`open_store` is the one place a database is chosen and opened: the service (`run`, `chat`),
`forget` and `export` all open theirs here, so a second database is one module implementing
the store and lock ports plus one line in `open_store`.
"""

from __future__ import annotations

from pathlib import Path

from bot.ports.store import ChatStore


async def open_store(path: Path | str) -> ChatStore:
    """The store at DATABASE_PATH (SQLite, created and migrated if need be)."""
    from storage.history import HistoryStore  # aiosqlite only where a store is opened

    return await HistoryStore.open(Path(path) if not isinstance(path, Path) else path)
