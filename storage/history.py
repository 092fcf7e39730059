"""Conversation histories in SQLite through aiosqlite: WAL, foreign keys, versioned schema.

Every write is one transaction. One connection is shared by the whole process; a lock keeps
transactions from interleaving on it. A redelivered platform message is recognised by its
(platform, delivery_key) row and never stored or answered twice; a reset moves the point where
the history starts and keeps every old row.

Private data: the store opens only a SQLite database or a path that does not exist yet, and
keeps its files private (storage/files.py). Deleted text is overwritten
(`secure_delete`) and, after every deletion or edit, the WAL is checkpointed and truncated, so
the text is gone from the files, not only unlinked. Each user turn keeps its author's platform
id, so one person's messages can be exported or forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from bot.errors import DatabasePathError, StorageError
from storage.community import CommunityRecords
from storage.deliveries import DeliveryRecords
from storage.files import prepare_database_file
from storage.private import PrivateRecords
from storage.schema import MIGRATIONS, SCHEMA_VERSION
from storage.summaries import SummaryRecords
from storage.turns import TurnRecords

log = logging.getLogger(__name__)


class HistoryStore(PrivateRecords, TurnRecords, DeliveryRecords, SummaryRecords,
                   CommunityRecords):
    """The SQLite engine: one aiosqlite connection, BEGIN IMMEDIATE transactions, files kept
    private; the records themselves are the shared mixins'."""

    _db: aiosqlite.Connection  # the mixins see it as storage/sql.py's SqlConnection

    def __init__(self, connection: aiosqlite.Connection, path: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = connection
        self.path = path
        self._write = asyncio.Lock()
        self._clock = clock

    @classmethod
    async def open(cls, path: str | Path, *,
                   clock: Callable[[], float] = time.time) -> HistoryStore:
        """Open (creating it privately if needed) the database at `path`; `clock` stamps the
        turns (seconds since the epoch; tests pass their own)."""
        path = Path(path)
        try:
            if str(path) != ":memory:":
                prepare_database_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except DatabasePathError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"DATABASE_PATH={path}: cannot open the database ({exc}); "
                "set DATABASE_PATH to a file in a writable directory"
            ) from None
        store = cls(db, path, clock)
        try:
            await store._prepare()
        except sqlite3.Error as exc:
            await db.close()
            raise StorageError(
                f"DATABASE_PATH={path}: cannot use the database ({exc}); "
                "set DATABASE_PATH to a writable SQLite file"
            ) from None
        return store

    async def _prepare(self) -> None:
        await self._db.execute("PRAGMA busy_timeout = 5000")
        await self._db.execute("PRAGMA journal_mode = WAL")
        await self._db.execute("PRAGMA foreign_keys = ON")
        await self._db.execute("PRAGMA synchronous = NORMAL")
        await self._db.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten
        async with self._transaction() as db:
            row = await (await db.execute("PRAGMA user_version")).fetchone()
            if row is None:  # PRAGMA user_version always answers one row
                raise sqlite3.DatabaseError("PRAGMA user_version gave no row")
            (version,) = row
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this bot")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Also when cancelled mid-statement: aiosqlite still runs what was sent, in
                # order, so this ROLLBACK follows it; "no transaction is active" is fine.
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._db.execute("ROLLBACK")
                raise

    async def scrub(self, tries: int = 1) -> bool:
        """Move everything from the WAL into the database file and truncate the WAL, so text
        deleted (and overwritten, `secure_delete`) is not left in older WAL frames. Waits for
        readers (other processes on the same file) up to the busy timeout, `tries` times; the
        running bot tries once (its writes wait meanwhile), `forget` a few times.
        Returns whether the WAL is empty now; logs a warning when it is not."""
        if str(self.path) == ":memory:":
            return True
        for _ in range(tries):
            async with self._write:
                row = await (await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")).fetchone()
            if row is not None and row[0] == 0:
                return True
        log.warning("%s: the WAL could not be emptied (a reader kept it busy); deleted text "
                    "stays in %s-wal until the next checkpoint", self.path, self.path.name)
        return False
