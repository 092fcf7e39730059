"""Several bot processes on one PostgreSQL: the shared implementations of bot/ports/replicas.py
and bot/ports/locks.py, through asyncpg.

- `PgLeases`: a row per answer being written (`answer_leases`), its expiry set by the server's
  clock (no clock skew between hosts); a claim wins only where no row is live; this process
  renews the rows of its runners every third of LEASE_S, so a killed process's rows run out and
  another process's claim takes them over.
- `PgPersonCounts`: a row per answer of a person waiting for or running in the engine
  (`person_slots`), counted under a per-person advisory lock, renewed the same way.
- `PgConversationLocks`: a session advisory lock per conversation, taken on a connection of a
  pool of its own, held for the whole turn, and by a waiter for another process's turn while
  it waits (never one of the store's or the leases' connections). Its size caps this
  process's turns running and waiting together (the service sizes it 2 x MAX_BATCH); the
  server frees the locks of a process that dies with its connections.
- `PgControlBus`: LISTEN/NOTIFY on one channel; one connection listens, reconnecting when lost
  (a stop published while it is down is not heard here: NOTIFY keeps nothing for later).

Their tables are the schema's migration 11 (storage/pg_schema.py). Each process opens these
with `open_pg_replicas` (bot/service/assembly.py) and closes them with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import asyncpg

from bot.conversation import ConversationKey
from bot.errors import StoreUnreachable, UserBusyError
from bot.ports.locks import InProcessLocks
from bot.ports.replicas import Marker, Replicas, StopHandler
from storage.pg_schema import migrate

log = logging.getLogger(__name__)

STOP_CHANNEL = "rinna_stop"
_LIVE = "until > clock_timestamp()"
_FROM_NOW = "clock_timestamp() + make_interval(secs => $%d)"


async def create_tables(pool: asyncpg.Pool) -> None:
    """The schema brought up to date (its migration 11 holds these tables): what the store
    does at its start, done here too so these parts never depend on the order of opening."""
    async with pool.acquire() as conn:
        await migrate(conn)


_LOST = (OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError,
         asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.AdminShutdownError)


@contextlib.contextmanager
def reachable(what: str) -> Iterator[None]:
    """The server away (down, restarting, the connection cut): StoreUnreachable, which the
    core tells people as a busy notice, like the store's own."""
    try:
        yield
    except _LOST as exc:
        raise StoreUnreachable(f"PostgreSQL: {what} failed ({type(exc).__name__})") from None


def lock_id(text: str) -> int:
    """A stable signed 64-bit number for an advisory lock (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big",
                          signed=True)


class Renewals:
    """Renews, every third of the lease, the rows this process holds now: the leases and
    person slots it took and has not let go. Their ids live here, in memory, and each leaves
    before its row is deleted, whatever the DELETE does: a row whose DELETE failed (the
    server restarting) is no longer renewed and runs out within a lease, so neither an answer
    nor a person's slot stays held for the life of the process."""

    def __init__(self, pool: asyncpg.Pool, lease_s: float) -> None:
        self._pool = pool
        self.lease_s = lease_s
        self.leases: set[tuple[str, str, str]] = set()  # (platform, delivery key, runner)
        self.slots: set[int] = set()  # person_slots ids
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease-renewals")

    async def renew(self) -> None:
        leases, slots = sorted(self.leases), sorted(self.slots)
        async with self._pool.acquire() as conn:
            if leases:
                await conn.execute(
                    f"UPDATE answer_leases SET until = {_FROM_NOW % 4} WHERE"
                    " (platform, delivery_key, runner) IN"
                    " (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
                    [p for p, _, _ in leases], [k for _, k, _ in leases],
                    [r for _, _, r in leases], self.lease_s)
            if slots:
                await conn.execute(f"UPDATE person_slots SET until = {_FROM_NOW % 2}"
                                   " WHERE id = ANY($1::bigint[])", slots, self.lease_s)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not renew this process's leases (%s); they run out in "
                            "%.0f s unless the database answers", type(exc).__name__,
                            self.lease_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PgLeases:
    def __init__(self, pool: asyncpg.Pool, renewals: Renewals) -> None:
        self._pool = pool
        self._renewals = renewals
        self.lease_s = renewals.lease_s

    async def claim(self, marker: Marker, runner: str) -> bool:
        with reachable("claiming a lease"):
            won = await self._pool.fetchval(
                "INSERT INTO answer_leases AS l (platform, delivery_key, runner, until)"
                f" VALUES ($1, $2, $3, {_FROM_NOW % 4})"
                " ON CONFLICT (platform, delivery_key) DO UPDATE"
                " SET runner = excluded.runner, until = excluded.until"
                " WHERE l.until <= clock_timestamp() RETURNING runner",
                *marker, runner, self.lease_s)
        if won is None:
            return False
        self._renewals.leases.add((*marker, runner))
        return True

    async def drop(self, marker: Marker, runner: str) -> None:
        """Never raises for a server away: the lease, no longer renewed, runs out instead
        (a failure here must not hide how the answer ended)."""
        self._renewals.leases.discard((*marker, runner))
        try:
            await self._pool.execute("DELETE FROM answer_leases WHERE platform = $1 AND"
                                     " delivery_key = $2 AND runner = $3", *marker, runner)
        except (*_LOST, asyncpg.PostgresError) as exc:
            log.warning("could not drop the lease on %s (%s); it runs out within %.0f s",
                        marker[1], type(exc).__name__, self.lease_s)

    async def held(self, markers: Iterable[Marker]) -> set[Marker]:
        return await self._leased(markers, _LIVE)

    async def lapsed(self, markers: Iterable[Marker]) -> set[Marker]:
        return await self._leased(markers, f"NOT ({_LIVE})")

    async def _leased(self, markers: Iterable[Marker], condition: str) -> set[Marker]:
        """Those of `markers` with a lease row meeting `condition` (live, or run out)."""
        wanted = list(markers)
        if not wanted:
            return set()
        with reachable("reading leases"):
            rows = await self._pool.fetch(
                "SELECT platform, delivery_key FROM answer_leases WHERE"
                " (platform, delivery_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
                f" AND {condition}", [p for p, _ in wanted], [k for _, k in wanted])
        return {(row["platform"], row["delivery_key"]) for row in rows}

    async def clock(self) -> float:
        with reachable("reading the server's clock"):
            return float(await self._pool.fetchval(
                "SELECT extract(epoch FROM clock_timestamp())"))


class PgPersonCounts:
    def __init__(self, pool: asyncpg.Pool, renewals: Renewals, max_per_user: int) -> None:
        self._pool = pool
        self._renewals = renewals
        self.max_per_user = max_per_user
        self._runner = uuid.uuid4().hex  # this process's slots

    @contextlib.asynccontextmanager
    async def hold(self, person: str | None) -> AsyncIterator[None]:
        if person is None:
            yield
            return
        with reachable("counting a person's answers"):
            slot = await self._take_slot(person)
        self._renewals.slots.add(slot)
        try:
            yield
        finally:
            await self._give_back(slot)

    async def _give_back(self, slot: int) -> None:
        """Never raises for a server away: the slot, no longer renewed, runs out instead."""
        self._renewals.slots.discard(slot)
        try:
            await self._pool.execute("DELETE FROM person_slots WHERE id = $1", slot)
        except (*_LOST, asyncpg.PostgresError) as exc:
            log.warning("could not give back a person's slot (%s); it runs out within %.0f s",
                        type(exc).__name__, self._renewals.lease_s)

    async def _take_slot(self, person: str) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_id("person:" + person))
            count = await conn.fetchval(
                f"SELECT count(*) FROM person_slots WHERE person = $1 AND {_LIVE}", person)
            if count >= self.max_per_user:
                raise UserBusyError(f"{self.max_per_user} answers of this person in progress "
                                    "across the replicas")
            return int(await conn.fetchval(
                "INSERT INTO person_slots (person, runner, until)"
                f" VALUES ($1, $2, {_FROM_NOW % 3}) RETURNING id",
                person, self._runner, self._renewals.lease_s))


class PgConversationLocks:
    """One turn at a time per conversation across every process (arrival order: the server
    queues waiters for a lock in order; this process sends one waiter per conversation)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool  # its own: each waiter holds one of its connections
        self._local = InProcessLocks()

    @contextlib.asynccontextmanager
    async def hold(self, key: ConversationKey) -> AsyncIterator[None]:
        number = lock_id("\x1f".join(("conversation", key.platform, key.workspace,
                                       key.channel, key.thread)))
        async with self._local.hold(key), self._pool.acquire() as conn:
            with reachable("locking a conversation"):
                await conn.execute("SELECT pg_advisory_lock($1)", number)
            try:
                yield
            finally:  # a lost connection's locks were freed by the server with it (a
                # restart mid-turn frees them too): the turn's outcome stands. asyncpg may
                # still be reading the server's goodbye: InternalClientError, same meaning.
                with contextlib.suppress(*_LOST, asyncpg.InternalClientError):
                    if not conn.is_closed():  # (a proxy the pool took back raises instead)
                        await conn.execute("SELECT pg_advisory_unlock($1)", number)


class PgControlBus:
    """A stop published by any process reaches every process's handlers (LISTEN/NOTIFY)."""

    def __init__(self, dsn: str, pool: asyncpg.Pool) -> None:
        self._dsn = dsn
        self._pool = pool
        self._handlers: list[StopHandler] = []
        self._listener: asyncpg.Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        if self._closed:  # closed while connecting: nothing may keep it open
            await conn.close()
            return
        await conn.add_listener(STOP_CHANNEL, self._notified)
        conn.add_termination_listener(self._lost)
        self._listener = conn

    def on_stop(self, handler: StopHandler) -> None:
        self._handlers.append(handler)

    async def publish_stop(self, marker: Marker) -> None:
        with reachable("sending a stop"):
            await self._pool.execute("SELECT pg_notify($1, $2)", STOP_CHANNEL,
                                     json.dumps(list(marker)))

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            platform, key = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("ignored a malformed stop notification")
            return
        for handler in self._handlers:
            handler((str(platform), str(key)))

    def _lost(self, conn: object) -> None:
        if not self._closed and self._reconnecting is None:
            log.warning("the stop channel's connection was lost; reconnecting")
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                await self.start()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                log.info("the stop channel listens again")
                break
        self._reconnecting = None

    async def aclose(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()


@dataclass(frozen=True)
class PgReplicas:
    """What `open_pg_replicas` opened: the ports, and what closes them."""

    replicas: Replicas
    locks: PgConversationLocks
    pools: tuple[asyncpg.Pool, ...]
    renewals: Renewals
    bus: PgControlBus

    async def aclose(self) -> None:
        await self.renewals.aclose()
        await self.bus.aclose()
        for pool in self.pools:
            await pool.close()


async def open_pg_replicas(dsn: str, *, lease_s: float, max_per_user: int,
                           lock_connections: int = 16) -> PgReplicas:
    """Connect the shared parts (their tables created if missing) for one process."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    locks_pool = await asyncpg.create_pool(dsn, min_size=0, max_size=lock_connections)
    try:
        await create_tables(pool)
        renewals = Renewals(pool, lease_s)
        bus = PgControlBus(dsn, pool)
        await bus.start()
    except BaseException:
        await locks_pool.close()
        await pool.close()
        raise
    renewals.start()
    replicas = Replicas(PgLeases(pool, renewals), bus,
                        PgPersonCounts(pool, renewals, max_per_user), shared=True)
    return PgReplicas(replicas, PgConversationLocks(locks_pool), (pool, locks_pool),
                      renewals, bus)
