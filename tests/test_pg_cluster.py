"""The throwaway PostgreSQL the store's tests run on: started by tests/pg/cluster.sh (as the
`postgres` user when we are root), one database per test (dropped after it), reached with a
password."""

from __future__ import annotations

import asyncpg

from tests.pg.fixtures import Cluster, create_database, drop_database


async def test_each_test_gets_its_own_empty_database_on_postgresql_15(pg_dsn: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        version = await connection.fetchval("SHOW server_version_num")
        tables = await connection.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        database = await connection.fetchval("SELECT current_database()")
    finally:
        await connection.close()
    assert int(version) // 10000 == 15
    assert tables == 0
    assert database in pg_dsn and database.startswith("t_")


async def test_the_server_wants_the_password(pg_cluster: Cluster) -> None:
    wrong = pg_cluster.dsn.replace("postgres:", "postgres:wrong", 1)
    try:
        await asyncpg.connect(wrong)
    except asyncpg.InvalidPasswordError:
        return
    raise AssertionError("a wrong password was accepted: the DSN tests would prove nothing")


async def test_a_test_database_is_dropped_even_with_a_connection_left_open(
        pg_cluster: Cluster) -> None:
    """What `pg_dsn` does after its test: a store a failed test left open does not keep it."""
    dsn = await create_database(pg_cluster.dsn)
    name = dsn.rsplit("/", 1)[-1]
    left_open = await asyncpg.connect(dsn)
    await drop_database(pg_cluster.dsn, dsn)
    admin = await asyncpg.connect(pg_cluster.dsn)
    try:
        assert not await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
        left_open.terminate()
