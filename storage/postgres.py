"""The store on PostgreSQL through asyncpg (DATABASE_URL=postgresql://…), for several bot
replicas sharing one history. The records are the mixins SQLite uses too (storage/turns.py,
deliveries.py, private.py, summaries.py, community.py): one body of SQL, so both engines pass
the same behavioural tests; this module is the engine: the pool, transactions, migrations,
VACUUM.

Transactions: each write is one transaction that first takes a transaction-level advisory
lock shared by every replica (`WRITE_LOCK`), so writes are serialised across replicas exactly
as SQLite's BEGIN IMMEDIATE serialises them within one file: every transition's check of the
state it comes from, and every read-then-write (a regeneration's "nothing is being
answered", a summary's fingerprint), sees no rival half-way. Writes are short (a few
statements); reads take no lock.

The pool (DATABASE_POOL_SIZE connections) reconnects by itself: a connection the server
dropped is replaced on the next use. The DSN's password is never shown: errors and the repr
name the DSN with `***` in its place (storage/pg_wire.py, `redact`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from bot.errors import StorageError, StoreUnreachable
from storage.community import CommunityRecords
from storage.deliveries import DeliveryRecords
from storage.pg_schema import TABLES, migrate, schema_version
from storage.pg_wire import PgPool, PgTransaction, redact
from storage.private import PrivateRecords
from storage.summaries import SummaryRecords
from storage.turns import TurnRecords

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key every write transaction takes: "rinnaWRT" in ASCII.
WRITE_LOCK = 0x72696E6E61575254
# What VACUUM reclaims after a deletion or edit: the tables people's text and votes are in.
TEXT_TABLES = ("turns", "deliveries", "feedback", "summaries", "unread_files")
CONNECT_TIMEOUT_S = 10.0

# The errors that mean "the server cannot be reached" (down, restarting, connection lost).
UNREACHABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, TimeoutError)


class PostgresStore(PrivateRecords, TurnRecords, DeliveryRecords, SummaryRecords,
                    CommunityRecords):
    def __init__(self, pool: asyncpg.Pool, dsn: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._db = PgPool(pool)
        self.dsn = redact(dsn)  # only ever kept redacted
        self._clock = clock

    def __repr__(self) -> str:
        return f"PostgresStore({self.dsn!r})"

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 10,
                   clock: Callable[[], float] = time.time) -> PostgresStore:
        """Connect (a pool of `pool_size`), migrate under the advisory lock, or raise
        StorageError in one line naming the DSN without its password."""
        shown = redact(dsn)
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max(1, pool_size),
                                             timeout=CONNECT_TIMEOUT_S)
        except UNREACHABLE as exc:
            raise StoreUnreachable(f"DATABASE_URL={shown}: cannot reach PostgreSQL "
                               f"({_reason(exc, dsn)})") from None
        except asyncpg.PostgresError as exc:
            raise StorageError(f"DATABASE_URL={shown}: PostgreSQL refused the connection "
                               f"({_reason(exc, dsn)})") from None
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
        except StorageError as exc:
            await pool.close()
            raise StorageError(f"DATABASE_URL={shown}: {exc}") from None
        except (*UNREACHABLE, asyncpg.PostgresError) as exc:
            await pool.close()
            raise StorageError(f"DATABASE_URL={shown}: cannot prepare the database "
                               f"({_reason(exc, dsn)})") from None
        return cls(pool, dsn, clock)

    async def close(self) -> None:
        await self._pool.close()

    async def schema_version(self) -> int:
        async with self._pool.acquire() as connection:
            return await schema_version(connection)

    async def server_version(self) -> str:
        async with self._pool.acquire() as connection:
            return str(await connection.fetchval("SHOW server_version"))

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PgTransaction]:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            yield PgTransaction(connection)

    async def scrub(self, tries: int = 1) -> bool:
        """VACUUM the tables people's text is in, so the space of deleted rows and of old
        row versions is reclaimed (marked free for reuse). It does not rewrite the files, and
        the server's WAL and backups keep what they keep (README, "What gone means")."""
        async with self._pool.acquire() as connection:
            await connection.execute(f"VACUUM {', '.join(TEXT_TABLES)}")
        return True


def _reason(exc: BaseException, dsn: str) -> str:
    """The error's own words, one line, with the password (if it appears) masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    from urllib.parse import urlsplit

    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


__all__ = ["PostgresStore", "TABLES", "UNREACHABLE"]
