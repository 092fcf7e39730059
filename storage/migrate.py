"""`rinna-bot migrate-db`: copy a SQLite history into PostgreSQL, idempotently, and check it.

Every table is copied row by row with its own keys (ids included, so turns, deliveries and
summaries keep pointing at each other), in one PostgreSQL transaction under the store's
write lock: a copy is whole or absent. A row already there (an earlier run) is left as it is,
so running it again copies nothing twice; the identity sequences then continue after the
copied ids. The target must be empty or hold an earlier copy of this same history: a
conversation id that names another conversation there is refused before anything is written.
The SQLite file is first brought to this bot's schema in place (as the bot's own start would),
so the copy reads the current tables. Only the columns both sides have are copied (a column
the PostgreSQL schema dropped, such as `deliveries.imported`, is left behind).

Afterwards every source row is looked for in PostgreSQL whole, every copied column equal
(NULL equal to NULL): a row missing there, or a different row under the same key (one an
earlier copy wrote that has since changed in SQLite, kept by ON CONFLICT DO NOTHING), is a
shortfall, reported as an error. A PostgreSQL error during the copy rolls it all back and is
one StorageError line naming the URL without its password.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bot.errors import StorageError
from storage.pg_schema import TABLES
from storage.pg_wire import redact
from storage.postgres import WRITE_LOCK, PostgresStore

# Each table's key, as PostgreSQL's unique constraint names it.
KEYS: dict[str, tuple[str, ...]] = {
    "conversations": ("id",), "turns": ("id",), "deliveries": ("platform", "delivery_key"),
    "feedback": ("platform", "delivery_key", "user"),
    "sources": ("platform", "source_key", "delivery_key"),
    "community_settings": ("platform", "workspace", "channel", "thread", "key"),
    "settings_audit": ("id",), "summaries": ("conversation_id",),
    "summary_requests": ("platform", "delivery_key"), "window_notices": ("conversation_id",),
    "unread_files": ("platform", "delivery_key"),
}
IDENTITIES = ("conversations", "turns", "settings_audit")
_CASTS = {"bigint": int, "integer": int, "double precision": float, "text": str}
_ARRAY_TYPES = {"bigint": "bigint", "integer": "bigint", "double precision": "float8"}


@dataclass(frozen=True, slots=True)
class Copied:
    """One table: rows in SQLite, rows newly written, rows of SQLite's found in PostgreSQL
    whole (every copied column equal)."""

    table: str
    source: int
    written: int
    found: int

    @property
    def complete(self) -> bool:
        return self.found == self.source


def _quoted(column: str) -> str:
    return f'"{column}"'


async def copy_history(path: Path, dsn: str) -> list[Copied]:
    """Copy the SQLite history at `path` into the PostgreSQL database at `dsn`."""
    from storage.history import HistoryStore

    if not path.is_file():
        raise StorageError(f"DATABASE_PATH={path}: no SQLite database there to copy")
    source_store = await HistoryStore.open(path)  # brought to the current schema first
    await source_store.close()
    target = await PostgresStore.open(dsn, pool_size=1)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as source:
            async with target._connection() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                await _refuse_another_history(source, connection, dsn)
                copied = [await _copy_table(source, connection, table) for table in TABLES]
                for table in IDENTITIES:
                    await connection.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                        f" GREATEST((SELECT MAX(id) FROM {table}), 1))")
    except asyncpg.PostgresError as exc:  # the transaction rolled back: nothing was written
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise StorageError(f"DATABASE_URL={redact(dsn)}: the copy failed and was rolled back,"
                           f" nothing written ({type(exc).__name__}: {text})") from None
    finally:
        await target.close()
    return copied


async def _refuse_another_history(source: sqlite3.Connection, target: asyncpg.Connection,
                                  dsn: str) -> None:
    there = {row["id"]: tuple(row)[1:] for row in await target.fetch(
        "SELECT id, platform, workspace, channel, thread FROM conversations")}
    keys = {key: id_ for id_, key in there.items()}
    for id_, *key in source.execute(
            "SELECT id, platform, workspace, channel, thread FROM conversations"):
        if there.get(id_, tuple(key)) != tuple(key) or keys.get(tuple(key), id_) != id_:
            raise StorageError(
                f"DATABASE_URL={redact(dsn)} holds another history (conversation {id_} differs);"
                " copy into an empty database, or one an earlier migrate-db filled from this"
                " file")


async def _copy_table(source: sqlite3.Connection, target: asyncpg.Connection,
                      table: str) -> Copied:
    types = {row["column_name"]: row["data_type"] for row in await target.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = $1", table)}
    present = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    columns = [column for column in present if column in types]
    casts = [_CASTS.get(types[column], str) for column in columns]
    # each row holds exactly `columns`, the SELECT's list: strict states it
    rows = [tuple(None if value is None else cast(value)
                  for cast, value in zip(casts, row, strict=True))
            for row in source.execute(
                f"SELECT {', '.join(map(_quoted, columns))} FROM {table}")]
    before = int(await target.fetchval(f"SELECT count(*) FROM {table}"))
    if rows:
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        await target.executemany(
            f"INSERT INTO {table} ({', '.join(map(_quoted, columns))}) VALUES ({marks})"
            " ON CONFLICT DO NOTHING", rows)
    written = int(await target.fetchval(f"SELECT count(*) FROM {table}")) - before
    return Copied(table, len(rows), written, await _found(target, table, columns, types, rows))


async def _found(target: asyncpg.Connection, table: str, columns: list[str],
                 types: dict[str, str], rows: list[tuple[Any, ...]]) -> int:
    """How many of the source rows are in the table whole: found by their key (unique
    there, so each matches at most one row), every copied column equal."""
    if not rows:
        return 0
    key = set(KEYS[table])
    arrays = [[row[i] for row in rows] for i in range(len(columns))]
    kinds = [_ARRAY_TYPES.get(types[column], "text") for column in columns]
    unnest = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(kinds, 1))
    names = ", ".join(f"k{n}" for n in range(len(columns)))
    join = " AND ".join(
        f"t.{_quoted(column)} {'=' if column in key else 'IS NOT DISTINCT FROM'} k.k{n}"
        for n, column in enumerate(columns))
    return int(await target.fetchval(
        f"SELECT count(*) FROM {table} t JOIN unnest({unnest}) AS k({names}) ON {join}",
        *arrays))
