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
dropped is replaced on the next use. When the server is away (restarting, failing over), each
store call waits for it, trying again with a growing pause, up to `Reconnect.wait_s` (30 s): a
message that arrives meanwhile is answered once the server is back. Past that wait, or when
the connection drops in the middle of a statement, the call raises StoreUnreachable (its
notice: 「ただいま混み合っています…」); every pooled connection in use by other calls for the
whole wait is StoreBusy instead (the same notice; its message names DATABASE_POOL_SIZE, not
the server). Each try is bounded by the time left of the wait. A transaction cut off that
way was rolled back by the server, so nothing half-written stays, and what was committed
before (an accepted message) is still there for its answer or the recovery. The DSN's
password is never shown: errors and the repr name the DSN with `***` in its place
(storage/pg_wire.py, `redact`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from bot.errors import StorageError, StoreBusy, StoreUnreachable
from bot.ports.community import ChangeListener, Scope, SettingChange
from storage.community import CommunityRecords
from storage.deliveries import DeliveryRecords
from storage.pg_notify import CHANNEL, ChangeNotices, payload
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
SHORTEST_TRY_S = 0.01  # a try with (almost) no time left still gets this long

# The errors that mean "the server cannot be reached" (down, restarting, connection lost).
UNREACHABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How long a store call waits for an unreachable server, and who hears of each try
    (`on_wait(error)`: logs; tests wait on it rather than on time)."""

    wait_s: float = 30.0
    first_pause_s: float = 0.05
    longest_pause_s: float = 1.0
    on_wait: Callable[[BaseException], None] | None = None


class PostgresStore(PrivateRecords, TurnRecords, DeliveryRecords, SummaryRecords,
                    CommunityRecords):
    def __init__(self, pool: asyncpg.Pool, dsn: str,
                 clock: Callable[[], float] = time.time,
                 reconnect: Reconnect = Reconnect()) -> None:
        self._pool = pool
        self._pool_size = pool.get_max_size()
        self._in_use = 0  # pooled connections this store's calls hold now
        self._db = PgPool(self._connection)
        self.dsn = redact(dsn)  # only ever kept redacted
        self._clock = clock
        self._reconnect = reconnect
        # the raw DSN goes only to the listener's own connection (never shown)
        self._notices = ChangeNotices(dsn, self._announced,
                                      first_pause_s=reconnect.first_pause_s,
                                      longest_pause_s=reconnect.longest_pause_s,
                                      on_retry=reconnect.on_wait)

    def __repr__(self) -> str:
        return f"PostgresStore({self.dsn!r})"

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 10,
                   clock: Callable[[], float] = time.time,
                   reconnect: Reconnect = Reconnect()) -> PostgresStore:
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
        return cls(pool, dsn, clock, reconnect)

    async def close(self) -> None:
        await self._notices.close()
        await self._pool.close()

    # ----- community settings: every replica's listeners hear of a change (NOTIFY) ----------
    def on_change(self, listener: ChangeListener) -> None:
        super().on_change(listener)
        self._notices.start()

    async def change_settings(self, scope: Scope, values: Mapping[str, str | None],
                              actor: str) -> list[SettingChange]:
        """As SQLite's, then NOTIFY the other replicas (this one's listeners were called)."""
        changes = await super().change_settings(scope, values, actor)
        if changes:
            await self._db.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload(scope)))
        return changes

    def _announced(self, scope: Scope) -> None:
        for listener in getattr(self, "_listeners", ()):
            listener(scope)

    async def schema_version(self) -> int:
        async with self._connection() as connection:
            return await schema_version(connection)

    async def server_version(self) -> str:
        async with self._connection() as connection:
            return str(await connection.fetchval("SHOW server_version"))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, waiting for the server while it is away (`Reconnect`);
        the connection failing under a statement is StoreUnreachable."""
        connection = await self._acquire()
        self._in_use += 1
        try:
            yield connection
        except UNREACHABLE as exc:
            raise StoreUnreachable(f"DATABASE_URL={self.dsn}: the connection to PostgreSQL "
                                   f"was lost ({type(exc).__name__})") from exc
        finally:
            self._in_use -= 1
            await self._pool.release(connection)

    async def _acquire(self) -> asyncpg.Connection:
        """Each try bounded by the time left of `Reconnect.wait_s`; a try that timed out
        while every pooled connection was in use by this store's calls waited for a busy
        pool, not for the server (StoreBusy past the wait, and no pause before the next)."""
        policy = self._reconnect
        deadline = time.monotonic() + policy.wait_s
        pause = policy.first_pause_s
        while True:
            left = max(deadline - time.monotonic(), SHORTEST_TRY_S)
            try:
                return await self._pool.acquire(timeout=min(CONNECT_TIMEOUT_S, left))
            except UNREACHABLE as exc:
                busy = isinstance(exc, TimeoutError) and self._in_use >= self._pool_size
                if busy and time.monotonic() < deadline:
                    continue  # still queued behind other calls: the time left again
                if busy:
                    raise StoreBusy(f"DATABASE_URL={self.dsn}: all {self._pool_size} pooled"
                                    f" connections stayed in use for {policy.wait_s:g} s"
                                    " (DATABASE_POOL_SIZE)") from exc
                if time.monotonic() + pause > deadline:
                    raise StoreUnreachable(f"DATABASE_URL={self.dsn}: cannot reach PostgreSQL"
                                           f" ({type(exc).__name__})") from exc
                log.warning("PostgreSQL is unreachable (%s); trying again",
                            type(exc).__name__)
                if policy.on_wait is not None:
                    policy.on_wait(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, policy.longest_pause_s)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PgTransaction]:
        """BEGIN and the write lock in one round trip; COMMIT, or ROLLBACK on any error or
        cancellation (a connection that cannot roll back is dropped by the pool)."""
        async with self._connection() as connection:
            try:  # a cancellation while queued for the lock rolls back too
                await connection.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
                yield PgTransaction(connection)
            except BaseException:
                await _roll_back(connection)
                raise
            await connection.execute("COMMIT")

    async def scrub(self, tries: int = 1) -> bool:
        """VACUUM the tables people's text is in, so the space of deleted rows and of old
        row versions is reclaimed (marked free for reuse). It does not rewrite the files, and
        the server's WAL and backups keep what they keep (README, "What gone means")."""
        async with self._connection() as connection:
            await connection.execute(f"VACUUM {', '.join(TEXT_TABLES)}")
        return True


async def _roll_back(connection: asyncpg.Connection) -> None:
    """ROLLBACK; a connection that cannot (lost, or busy with a cancelled statement) is
    closed instead, and the server rolls back what it began."""
    if connection.is_closed():
        return
    try:
        await asyncio.shield(connection.execute("ROLLBACK"))
    except (*UNREACHABLE, asyncpg.PostgresError):
        connection.terminate()


async def probe(dsn: str) -> tuple[str, int]:
    """Read-only, for `doctor`: (the server's version, the database's schema version; 0 =
    nothing of ours yet). Changes nothing; StoreUnreachable / StorageError as `open`."""
    shown = redact(dsn)
    try:
        connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except UNREACHABLE as exc:
        raise StoreUnreachable(f"DATABASE_URL={shown}: cannot reach PostgreSQL "
                               f"({_reason(exc, dsn)})") from None
    except asyncpg.PostgresError as exc:
        raise StorageError(f"DATABASE_URL={shown}: PostgreSQL refused the connection "
                           f"({_reason(exc, dsn)})") from None
    try:
        server = str(await connection.fetchval("SHOW server_version"))
        return server, await schema_version(connection)
    finally:
        await connection.close()


def _reason(exc: BaseException, dsn: str) -> str:
    """The error's own words, one line, with the password (if it appears) masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    from urllib.parse import urlsplit

    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


__all__ = ["PostgresStore", "Reconnect", "TABLES", "UNREACHABLE", "probe"]
