"""Implementations of the store ports (bot/ports/store.py, bot/ports/locks.py).

`open_store` is the one place a database is chosen and opened: the service (`run`, `chat`),
`forget` and `export` all open theirs here. SQLite at DATABASE_PATH is the default (one
process); DATABASE_URL=postgresql://… chooses PostgreSQL (several replicas on one database).
Both engines share the records' code and pass the same behavioural tests.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from bot.ports.store import ChatStore


async def open_store(path: Path | str, *, url: SecretStr | str | None = None,
                     pool_size: int = 10) -> ChatStore:
    """PostgreSQL at `url` when one is given (migrated if need be), else the SQLite store at
    `path` (DATABASE_PATH; created and migrated if need be)."""
    if url is not None:
        from storage.postgres import PostgresStore  # asyncpg only where it is chosen

        dsn = url.get_secret_value() if isinstance(url, SecretStr) else url
        return await PostgresStore.open(dsn, pool_size=pool_size)
    from storage.history import HistoryStore  # aiosqlite only where a store is opened

    return await HistoryStore.open(Path(path) if not isinstance(path, Path) else path)
