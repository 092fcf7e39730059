"""The shared parts of several bot processes on one PostgreSQL (storage/pg_replicas.py), on the
real throwaway server (tests/pg): each "process" here is its own set of pools and connections,
as a replica has. Conditions are waited on, never slept on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from bot.conversation import ConversationKey
from bot.errors import StoreUnreachable, UserBusyError
from bot.ports.records import Delivery, DeliveryState
from storage.pg_replicas import PgReplicas, open_pg_replicas
from tests.pg.fixtures import Cluster

# this test's database's advisory locks only (other tests may share the server)
HERE = ("WHERE locktype = 'advisory' AND"
        " database = (SELECT oid FROM pg_database WHERE datname = current_database())")
KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")
MARKER = ("slack", "Ev1")


async def until(condition: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Wait until `condition()` is truthy, asking again after each await of the loop."""
    deadline = time.monotonic() + timeout
    while not (result := await condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)  # a poll interval: the condition decides
    return result


@pytest.fixture
async def replica(pg_dsn: str) -> AsyncIterator[Callable[..., Awaitable[PgReplicas]]]:
    """Opens one replica's shared parts per call (lease and limits as asked); all closed at
    the end."""
    opened: list[PgReplicas] = []

    async def open_one(lease_s: float = 30.0, max_per_user: int = 2) -> PgReplicas:
        parts = await open_pg_replicas(pg_dsn, lease_s=lease_s, max_per_user=max_per_user)
        opened.append(parts)
        return parts

    yield open_one
    for parts in opened:
        await parts.aclose()


# ----- leases -----------------------------------------------------------------------------
async def test_a_live_lease_is_claimed_once_and_its_holder_cannot_claim_it_again(
        replica: Callable[..., Awaitable[PgReplicas]]) -> None:
    a, b = (await replica()).replicas.leases, (await replica()).replicas.leases
    assert await a.claim(MARKER, "runner-a")
    assert not await b.claim(MARKER, "runner-b")
    assert not await a.claim(MARKER, "runner-a")  # a redelivery to the process writing it
    assert await b.held([MARKER, ("slack", "other")]) == {MARKER}
    await a.drop(MARKER, "runner-b")  # not b's to drop
    assert await b.held([MARKER]) == {MARKER}
    await a.drop(MARKER, "runner-a")
    assert await b.held([MARKER]) == set()
    assert await b.claim(MARKER, "runner-b")


async def test_a_renewed_lease_outlives_its_length_and_a_dead_ones_is_taken_over(
        replica: Callable[..., Awaitable[PgReplicas]], pg_dsn: str) -> None:
    alive, dead, survivor = [await replica(lease_s=0.6) for _ in range(3)]
    assert await alive.replicas.leases.claim(("slack", "kept"), "runner-alive")
    claimed_at = time.monotonic()  # before the claim: its lease runs from the server's "now"
    assert await dead.replicas.leases.claim(("slack", "lost"), "runner-dead")
    await dead.renewals.aclose()  # the process dies: nobody renews its lease any more
    took = await until(lambda: survivor.replicas.leases.claim(("slack", "lost"), "runner-s"))
    assert took and time.monotonic() - claimed_at >= 0.6
    # Well past its length, the renewed lease still holds.
    assert time.monotonic() - claimed_at > 0.6
    assert not await survivor.replicas.leases.claim(("slack", "kept"), "runner-s")
    connection = await asyncpg.connect(pg_dsn)
    try:
        runners = dict(await connection.fetch(
            "SELECT delivery_key, runner FROM answer_leases"))
    finally:
        await connection.close()
    assert runners == {"kept": "runner-alive", "lost": "runner-s"}


async def test_a_dead_writers_lapsed_lease_is_recovered_at_once_a_never_leased_one_waits(
        replica: Callable[..., Awaitable[PgReplicas]]) -> None:
    """Failover within the lease: an answer whose writer died (its lease ran out undropped) is
    the survivor's at its first look; one never leased (maybe just taken on by a live
    replica) only after it has been seen unleased for a whole lease."""
    dead, survivor = await replica(lease_s=0.6), await replica(lease_s=60.0)
    lost, fresh = (Delivery("slack", name, 1, KEY, DeliveryState.ANSWERING, 0.0)
                   for name in ("lost", "fresh"))
    assert await dead.replicas.leases.claim(("slack", "lost"), "runner-dead")
    await dead.renewals.aclose()  # the process dies: nobody renews its lease any more
    leases = survivor.replicas.leases
    await until(lambda: leases.lapsed([("slack", "lost")]))
    assert await leases.held([("slack", "lost"), ("slack", "fresh")]) == set()
    assert await survivor.replicas.unclaimed([lost, fresh]) == [lost]


async def test_a_lease_and_a_slot_whose_delete_failed_run_out_instead_of_living_on(
        replica: Callable[..., Awaitable[PgReplicas]], pg_cluster: Cluster) -> None:
    """The server restarting while an answer ends: its lease and its person's slot cannot be
    deleted. Ending the answer still ends well (nothing raised over its outcome), and neither
    row is renewed any more: each runs out, and another process takes them."""
    ending, other = await replica(lease_s=1.0, max_per_user=1), await replica(lease_s=1.0,
                                                                            max_per_user=1)
    assert await ending.replicas.leases.claim(MARKER, "runner-a")
    stopped = False
    try:
        async with ending.replicas.counts.hold("slack:U1"):
            pg_cluster.pg_ctl("stop")
            stopped = True
        await ending.replicas.leases.drop(MARKER, "runner-a")  # logged, not raised
    finally:
        if stopped:
            pg_cluster.pg_ctl("start")

    async def claimed() -> bool:  # the first query after the restart may meet a dead connection
        try:
            return await other.replicas.leases.claim(MARKER, "runner-b")
        except StoreUnreachable:
            return False

    assert await until(claimed)

    async def admitted() -> bool:
        try:
            async with other.replicas.counts.hold("slack:U1"):
                return True
        except (UserBusyError, StoreUnreachable):
            return False

    assert await until(admitted)


# ----- conversation locks -----------------------------------------------------------------
async def test_the_conversation_lock_holds_across_processes_and_dies_with_its_holder(
        replica: Callable[..., Awaitable[PgReplicas]], pg_dsn: str) -> None:
    a, b, c = (await replica()).locks, (await replica()).locks, (await replica()).locks
    order: list[str] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def turn(locks: Any, name: str, wait: asyncio.Event | None = None) -> None:
        async with locks.hold(KEY):
            order.append(name)
            holding.set()
            if wait is not None:
                await wait.wait()

    first = asyncio.create_task(turn(a, "a", release))
    await holding.wait()
    second = asyncio.create_task(turn(b, "b"))
    admin = await asyncpg.connect(pg_dsn)
    try:
        await until(lambda: admin.fetchval(
            f"SELECT count(*) FROM pg_locks {HERE} AND NOT granted"))
        assert order == ["a"] and not second.done()
        release.set()
        await asyncio.gather(first, second)
        assert order == ["a", "b"]
        # A holder whose process dies (its connection gone) frees the lock at once.
        stuck = asyncio.Event()
        holding.clear()
        dying = asyncio.create_task(turn(c, "c", stuck))
        await holding.wait()
        waiter = asyncio.create_task(turn(b, "b2"))
        await until(lambda: admin.fetchval(
            f"SELECT count(*) FROM pg_locks {HERE} AND NOT granted"))
        await admin.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_locks {HERE} AND granted")
        await asyncio.wait_for(waiter, timeout=20)
        assert order[-1] == "b2"
        dying.cancel()
        await asyncio.gather(dying, return_exceptions=True)
    finally:
        await admin.close()


async def test_a_turn_whose_lock_connection_was_lost_still_ends_as_it_did(
        replica: Callable[..., Awaitable[PgReplicas]], pg_dsn: str) -> None:
    """The server cut the lock's connection mid-turn (a restart does too), which freed the
    lock: giving it back is then moot, and must not turn the finished turn into a failure."""
    locks = (await replica()).locks
    admin = await asyncpg.connect(pg_dsn)
    try:
        async with locks.hold(KEY):
            await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_locks {HERE}")
            await until(lambda: admin.fetchval(f"SELECT count(*) = 0 FROM pg_locks {HERE}"))
    finally:
        await admin.close()
    async with locks.hold(KEY):  # the lock is free, and taken on a live connection
        pass


async def test_other_conversations_do_not_wait_for_a_held_one(
        replica: Callable[..., Awaitable[PgReplicas]]) -> None:
    a, b = (await replica()).locks, (await replica()).locks
    async with a.hold(KEY):
        other = ConversationKey("slack", "T1", "C1", "1700000000.000200")
        async with b.hold(other):
            pass  # entered while KEY is held elsewhere


# ----- stop across processes --------------------------------------------------------------
async def test_a_stop_published_on_one_process_reaches_the_others(
        replica: Callable[..., Awaitable[PgReplicas]]) -> None:
    a, b = await replica(), await replica()
    arrived: list[tuple[str, str]] = []
    reached = asyncio.Event()
    b.replicas.bus.on_stop(lambda marker: (arrived.append(marker), reached.set()))
    await a.replicas.bus.publish_stop(MARKER)
    await asyncio.wait_for(reached.wait(), timeout=10)
    assert arrived == [MARKER]


async def test_the_stop_channel_listens_again_after_its_connection_is_lost(
        replica: Callable[..., Awaitable[PgReplicas]], pg_dsn: str) -> None:
    a, b = await replica(), await replica()
    reached = asyncio.Event()
    b.replicas.bus.on_stop(lambda marker: reached.set())
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE query LIKE 'LISTEN%' AND datname = current_database()")
    finally:
        await admin.close()

    async def delivered() -> bool:
        await a.replicas.bus.publish_stop(MARKER)
        try:
            await asyncio.wait_for(reached.wait(), timeout=0.2)
        except TimeoutError:
            return False
        return True

    assert await until(delivered)


# ----- a person's answers, counted in the database -------------------------------------------
async def test_max_per_user_counts_a_persons_answers_in_every_process(
        replica: Callable[..., Awaitable[PgReplicas]]) -> None:
    a, b = await replica(max_per_user=2), await replica(max_per_user=2)
    counts_a, counts_b = a.replicas.counts, b.replicas.counts
    async with counts_a.hold("slack:U1"), counts_b.hold("slack:U1"):
        with pytest.raises(UserBusyError):
            async with counts_b.hold("slack:U1"):
                pass
        async with counts_a.hold("slack:U2"), counts_a.hold(None):
            pass  # another person, and no person, are not held up
    async with counts_a.hold("slack:U1"), counts_b.hold("slack:U1"):
        pass  # both slots were given back


async def test_a_dead_processs_slots_run_out(
        replica: Callable[..., Awaitable[PgReplicas]]) -> None:
    dead, alive = await replica(lease_s=0.6, max_per_user=1), await replica(lease_s=0.6,
                                                                          max_per_user=1)
    holding = asyncio.Event()
    forever = asyncio.Event()

    async def hold_forever() -> None:
        async with dead.replicas.counts.hold("slack:U1"):
            holding.set()
            await forever.wait()

    held = asyncio.create_task(hold_forever())
    await holding.wait()
    await dead.renewals.aclose()

    async def admitted() -> bool:
        try:
            async with alive.replicas.counts.hold("slack:U1"):
                return True
        except UserBusyError:
            return False

    assert not await admitted()
    assert await until(admitted)
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
