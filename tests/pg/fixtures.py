"""A real PostgreSQL 15 for the tests: one throwaway cluster per test session, one database per
test that asks for `pg_dsn`.

`make test` (and so `.ci/run`) starts the cluster with tests/pg/cluster.sh and passes its
DSN in RINNA_TEST_PG_DSN; a bare `pytest` starts one itself through the same script, and stops
it at the end. If the server cannot be started, every test that needs it FAILS with the
script's message: never skipped, so CI cannot pass without PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

SCRIPT = Path(__file__).with_name("cluster.sh")
ENV = "RINNA_TEST_PG_DSN"


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at `database` instead of the one it names."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


class Cluster:
    """A started server: its admin DSN, and (when this session started it) its directory."""

    def __init__(self, dsn: str, directory: str | None) -> None:
        self.dsn = dsn
        self.directory = directory

    @classmethod
    def start(cls) -> Cluster:
        done = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL could not be started for the tests: "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        directory, dsn = done.stdout.strip().splitlines()[-2:]
        return cls(dsn, directory)

    def stop(self) -> None:
        if self.directory is not None:
            subprocess.run([str(SCRIPT), "stop", self.directory], check=False, timeout=60)

    @property
    def port(self) -> int:
        return int(urlsplit(self.dsn).port or 5432)

    def pg_ctl(self, action: str) -> None:
        """Stop (`stop`) or start (`start`) the server in place: a test's bad day. Only for a
        cluster this session started."""
        if self.directory is None:
            raise RuntimeError(f"{ENV} names a server this session did not start")
        data = f"{self.directory}/data"
        command = ["/usr/lib/postgresql/15/bin/pg_ctl", "-D", data, "-w", "-t", "30"]
        if action == "stop":
            command += ["-m", "fast", "stop"]
        else:  # the options it was started with are kept in postmaster.opts
            command += ["-l", f"{self.directory}/server.log", "start", "-o",
                        _options(Path(data) / "postmaster.opts")]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)


def _options(opts: Path) -> str:
    """The server options of the last start, from postmaster.opts (`"-c" "x=y" ...`)."""
    words = opts.read_text().split('"')[1::2]  # the quoted words, the binary's path excluded
    return " ".join(words)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    given = os.environ.get(ENV)
    if given:
        yield Cluster(given, os.environ.get(ENV + "_DIR") or None)
        return
    try:
        cluster = Cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def pg_dsn(pg_cluster: Cluster) -> AsyncIterator[str]:
    """The DSN of a new, empty database of its own (dropped afterwards)."""
    dsn = await create_database(pg_cluster.dsn)
    yield dsn
    await drop_database(pg_cluster.dsn, dsn)


async def create_database(admin_dsn: str) -> str:
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database `dsn` names, closing what is still connected to it (a store a
    failed test left open)."""
    import asyncpg

    name = urlsplit(dsn).path.lstrip("/")
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
