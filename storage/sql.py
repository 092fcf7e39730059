"""What the shared store code asks of a database connection: aiosqlite's shape (execute ->
cursor; fetchone, fetchall, rowcount), which PostgreSQL's wrapper (storage/pg_wire.py) gives
asyncpg too. Both aiosqlite's Connection and pg_wire's PgPool / PgTransaction satisfy
`SqlConnection`; the record mixins (turns.py, deliveries.py, private.py, summaries.py,
community.py) see only these. Rows are sequences (sqlite3.Row, tuples, asyncpg Records)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

# One row: indexable and unpackable by position. Its values are what the engine gives (Any).
SqlRow = Sequence[Any]


class SqlCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> SqlRow | None: ...

    async def fetchall(self) -> Iterable[SqlRow]: ...


class SqlConnection(Protocol):
    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> SqlCursor: ...

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> object: ...
