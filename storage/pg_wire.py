"""asyncpg in the shape the shared store code speaks (storage/sql.py): `execute(sql, params)`
returning a cursor with `fetchone`, `fetchall` and `rowcount`, `?` placeholders turned into
PostgreSQL's `$n`. `PgTransaction` wraps one connection inside a transaction; `PgPool` runs
a read on any pooled connection (autocommit).

Also where a DSN is made safe to show: `redact` drops its password for logs, reprs, errors
and `doctor`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from storage.sql import SqlRow

_ROWS = re.compile(r"^\s*(SELECT|WITH|VALUES|SHOW)\b|\bRETURNING\b", re.IGNORECASE)


@lru_cache(maxsize=512)
def to_postgres(sql: str) -> str:
    """`?` placeholders -> `$1`, `$2`, ... (outside quoted literals and identifiers)."""
    out: list[str] = []
    number = 0
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


def _count(status: str) -> int:
    """The row count of a command status ("INSERT 0 1", "UPDATE 2", "DELETE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


@dataclass(frozen=True, slots=True)
class PgCursor:
    rows: Sequence[SqlRow]
    rowcount: int

    async def fetchone(self) -> SqlRow | None:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> Sequence[SqlRow]:
        return self.rows


async def run(connection: asyncpg.Connection, sql: str, parameters: Sequence[Any]) -> PgCursor:
    query = to_postgres(sql)
    if _ROWS.search(sql):
        rows = await connection.fetch(query, *parameters)
        return PgCursor(rows, len(rows))
    return PgCursor((), _count(await connection.execute(query, *parameters)))


class PgTransaction:
    """One connection inside a transaction (the store's `_transaction()` yields this)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> PgCursor:
        return await run(self.connection, sql, parameters)

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> None:
        rows = list(parameters)
        if rows:
            await self.connection.executemany(to_postgres(sql), rows)


class PgPool:
    """Reads outside a transaction: each statement on a connection from `connect` (the
    store's pool, waiting for the server when it is away)."""

    def __init__(self, connect: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
                 ) -> None:
        self.connect = connect

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> PgCursor:
        async with self.connect() as connection:
            return await run(connection, sql, parameters)

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> None:
        async with self.connect() as connection:
            await PgTransaction(connection).executemany(sql, parameters)


def redact(dsn: str) -> str:
    """`dsn` without its password (user, host, port, database and options stay)."""
    try:
        parts = urlsplit(dsn)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "postgresql://…"
    if parts.password is None and "password=" not in parts.query:
        return dsn
    user = parts.username or ""
    netloc = "" if parts.password is None else (f"{user}:***@" if user else ":***@")
    netloc = netloc or (f"{user}@" if user else "")
    netloc += f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))
