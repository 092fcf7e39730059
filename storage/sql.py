"""What the shared store code asks of a database connection: aiosqlite's shape (execute ->
cursor; fetchone, fetchall, rowcount), which PostgreSQL's wrapper (storage/pg_wire.py) gives
asyncpg too. Rows are sequences (tuples, asyncpg Records)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class SqlCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Iterable[Any]: ...


class SqlConnection(Protocol):
    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any: ...

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Any: ...
