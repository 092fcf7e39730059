"""Conversation histories in SQLite through aiosqlite: WAL, foreign keys, versioned schema.

Every write is one transaction. One connection is shared by the whole process; a lock keeps
transactions from interleaving on it. A redelivered platform message is recognised by its
(platform, delivery_key) row and never stored or answered twice; a reset moves the point where
the history starts and keeps every old row.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import aiosqlite

from bot.conversation import ConversationKey, Speaker, Turn
from bot.errors import StorageError
from storage.schema import MIGRATIONS, SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Claim:
    """A platform message taken on for answering. `stored_turn` is set when its text is
    already in the history (it was read in with the thread before its own event arrived)."""

    conversation: int
    stored_turn: int | None = None


class DeliveryState(StrEnum):
    IMPORTED = "imported"  # read in with its thread; its own event, if it comes, is answered
    ACCEPTED = "accepted"  # taken on; its text is safe in the record
    ANSWERING = "answering"  # placeholder posted (reply_ref) and/or answer stored (final)
    ANSWERED = "answered"  # a final answer or a notice is shown: done


@dataclass(frozen=True, slots=True)
class Delivery:
    """One platform message taken on for answering, as recorded."""

    platform: str
    delivery_key: str
    conversation: int
    key: ConversationKey
    state: DeliveryState
    received_at: float
    turn_id: int | None = None  # its user turn, once stored
    reply_ref: str | None = None  # the platform handle of its placeholder, once posted
    final: str | None = None  # the final text, once the answer is stored
    # recorded by this very `accept` (False: an earlier handling began it, then died)
    fresh: bool = field(default=False, compare=False)


_DELIVERY_SELECT = (
    "SELECT d.platform, d.delivery_key, d.conversation_id, c.workspace, c.channel, c.thread,"
    " d.state, d.received_at, d.turn_id, d.reply_ref, d.final"
    " FROM deliveries d JOIN conversations c ON c.id = d.conversation_id")


def _delivery(row: Sequence[object]) -> Delivery:
    platform, key, conversation, workspace, channel, thread, state, received, turn, ref, final = row
    return Delivery(str(platform), str(key), int(conversation),  # type: ignore[call-overload]
                    ConversationKey(str(platform), str(workspace), str(channel), str(thread)),
                    DeliveryState(str(state)), float(received),  # type: ignore[arg-type]
                    None if turn is None else int(turn),  # type: ignore[call-overload]
                    None if ref is None else str(ref), None if final is None else str(final))


@dataclass(frozen=True, slots=True)
class StoredTurn:
    id: int
    turn: Turn


class HistoryStore:
    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._write = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> HistoryStore:
        path = Path(path)
        try:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"DATABASE_PATH={path}: cannot open the database ({exc}); "
                "set DATABASE_PATH to a file in a writable directory"
            ) from None
        store = cls(db, path)
        try:
            await store._prepare()
        except sqlite3.Error as exc:
            await db.close()
            raise StorageError(
                f"DATABASE_PATH={path}: cannot use the database ({exc}); "
                "set DATABASE_PATH to a writable SQLite file"
            ) from None
        return store

    async def _prepare(self) -> None:
        await self._db.execute("PRAGMA busy_timeout = 5000")
        await self._db.execute("PRAGMA journal_mode = WAL")
        await self._db.execute("PRAGMA foreign_keys = ON")
        await self._db.execute("PRAGMA synchronous = NORMAL")
        async with self._transaction() as db:
            (version,) = await (await db.execute("PRAGMA user_version")).fetchone()
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this bot")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Also when cancelled mid-statement: aiosqlite still runs what was sent, in
                # order, so this ROLLBACK follows it; "no transaction is active" is fine.
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._db.execute("ROLLBACK")
                raise

    # ----- conversations ---------------------------------------------------------------
    async def _conversation_id(self, db: aiosqlite.Connection, key: ConversationKey) -> int:
        await db.execute(
            "INSERT OR IGNORE INTO conversations (platform, workspace, channel, thread, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key.platform, key.workspace, key.channel, key.thread, time.time()),
        )
        row = await (await db.execute(
            "SELECT id FROM conversations WHERE platform=? AND workspace=? AND channel=?"
            " AND thread=?", (key.platform, key.workspace, key.channel, key.thread))).fetchone()
        return int(row[0])

    async def find(self, key: ConversationKey) -> int | None:
        """The conversation's id, or None if the bot has never taken part in it."""
        row = await (await self._db.execute(
            "SELECT id FROM conversations WHERE platform=? AND workspace=? AND channel=?"
            " AND thread=?", (key.platform, key.workspace, key.channel, key.thread))).fetchone()
        return None if row is None else int(row[0])

    async def reset(self, key: ConversationKey) -> None:
        """Start the conversation afresh: later prompts see only turns stored after this.
        A conversation the bot is not part of stays that way (no row is created)."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE conversations SET history_start = (SELECT COALESCE(MAX(id), 0) FROM turns)"
                " WHERE platform=? AND workspace=? AND channel=? AND thread=?",
                (key.platform, key.workspace, key.channel, key.thread))

    # ----- deliveries and turns --------------------------------------------------------
    async def claim(self, key: ConversationKey, delivery_key: str) -> Claim | None:
        """Take on a platform message whose handling is one write (a reset): recorded as
        answered at once. None if it was taken on before. A message first read in as thread
        history is taken on once, with its stored turn."""
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            cursor = await db.execute(
                "INSERT OR IGNORE INTO deliveries (platform, delivery_key, conversation_id,"
                " received_at, state) VALUES (?, ?, ?, ?, 'answered')",
                (key.platform, delivery_key, conversation, time.time()))
            if cursor.rowcount == 1:
                return Claim(conversation)
            row = await (await db.execute(
                "UPDATE deliveries SET imported = 0, state = 'answered' WHERE platform=?"
                " AND delivery_key=? AND state = 'imported' RETURNING conversation_id, turn_id",
                (key.platform, delivery_key))).fetchone()
            return None if row is None else Claim(int(row[0]), row[1])

    async def accept(self, key: ConversationKey, delivery_key: str, text: str) -> Delivery | None:
        """Record a platform message as taken on, with its text, in one transaction: from here
        on a crash cannot lose it. Returns its record, or None when it was answered before
        (a retry or a redelivery of a finished message). A record that is not finished (its
        first handling died) is returned as it stands, for the caller to take over."""
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            cursor = await db.execute(
                "INSERT OR IGNORE INTO deliveries (platform, delivery_key, conversation_id,"
                " received_at, state, text) VALUES (?, ?, ?, ?, 'accepted', ?)",
                (key.platform, delivery_key, conversation, time.time(), text))
            fresh = cursor.rowcount == 1
            if not fresh:
                # read in with its thread before its own event came: answer it, once
                cursor = await db.execute(
                    "UPDATE deliveries SET imported = 0, state = 'accepted' WHERE platform=?"
                    " AND delivery_key=? AND state = 'imported'", (key.platform, delivery_key))
                fresh = cursor.rowcount == 1
            row = await (await db.execute(
                _DELIVERY_SELECT + " WHERE d.platform=? AND d.delivery_key=?",
                (key.platform, delivery_key))).fetchone()
        delivery = replace(_delivery(row), fresh=fresh)
        return None if delivery.state is DeliveryState.ANSWERED else delivery

    async def delivery(self, platform: str, delivery_key: str) -> Delivery | None:
        row = await (await self._db.execute(
            _DELIVERY_SELECT + " WHERE d.platform=? AND d.delivery_key=?",
            (platform, delivery_key))).fetchone()
        return None if row is None else _delivery(row)

    async def unfinished(self, platform: str) -> list[Delivery]:
        """Messages of `platform` taken on but not answered yet, oldest first."""
        rows = await (await self._db.execute(
            _DELIVERY_SELECT + " WHERE d.platform=? AND d.state IN ('accepted', 'answering')"
            " ORDER BY d.received_at", (platform,))).fetchall()
        return [_delivery(row) for row in rows]

    async def store_user_turn(self, delivery: Delivery) -> int:
        """Move the message's text from its record into the history (once): one transaction."""
        async with self._transaction() as db:
            row = await (await db.execute(
                "SELECT turn_id, text FROM deliveries WHERE platform=? AND delivery_key=?",
                (delivery.platform, delivery.delivery_key))).fetchone()
            if row is None:
                raise sqlite3.IntegrityError("the delivery is gone")
            if row[0] is not None:
                return int(row[0])
            cursor = await db.execute(
                "INSERT INTO turns (conversation_id, speaker, text, created_at) VALUES (?,?,?,?)",
                (delivery.conversation, str(Speaker.USER), row[1] or "", time.time()))
            turn_id = int(cursor.lastrowid)
            await db.execute(
                "UPDATE deliveries SET turn_id=?, text=NULL WHERE platform=? AND delivery_key=?",
                (turn_id, delivery.platform, delivery.delivery_key))
            return turn_id

    async def set_reply_ref(self, delivery: Delivery, ref: str) -> None:
        """Remember where the reply's placeholder is (a restart edits it, not a new one)."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE deliveries SET reply_ref=?, state = CASE state WHEN 'accepted'"
                " THEN 'answering' ELSE state END WHERE platform=? AND delivery_key=?",
                (ref, delivery.platform, delivery.delivery_key))

    async def store_answer(self, delivery: Delivery, answer: str, final: str) -> None:
        """The answer turn (unless empty) and the final text to show, in one transaction."""
        async with self._transaction() as db:
            if answer:
                await db.execute(
                    "INSERT INTO turns (conversation_id, speaker, text, created_at)"
                    " VALUES (?,?,?,?)",
                    (delivery.conversation, str(Speaker.SYSTEM), answer, time.time()))
            await db.execute(
                "UPDATE deliveries SET final=?, state = CASE state WHEN 'accepted'"
                " THEN 'answering' ELSE state END WHERE platform=? AND delivery_key=?",
                (final, delivery.platform, delivery.delivery_key))

    async def mark_answered(self, delivery: Delivery) -> None:
        """The final text or a notice is shown: the message is done."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE deliveries SET state='answered', final=NULL, text=NULL"
                " WHERE platform=? AND delivery_key=?",
                (delivery.platform, delivery.delivery_key))

    async def has_turns(self, conversation: int) -> bool:
        """Whether anything was ever stored in the conversation (resets included)."""
        row = await (await self._db.execute(
            "SELECT 1 FROM turns WHERE conversation_id=? LIMIT 1", (conversation,))).fetchone()
        return row is not None

    async def seen(self, platform: str, delivery_key: str) -> bool:
        row = await (await self._db.execute(
            "SELECT 1 FROM deliveries WHERE platform=? AND delivery_key=?",
            (platform, delivery_key))).fetchone()
        return row is not None

    async def add_turn(
        self, conversation: int, turn: Turn, delivery: tuple[str, str] | None = None
    ) -> int:
        """Store one turn; `delivery` (platform, key) links the platform message to it."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO turns (conversation_id, speaker, text, created_at) VALUES (?,?,?,?)",
                (conversation, str(turn.speaker), turn.text, time.time()))
            turn_id = int(cursor.lastrowid)
            if delivery is not None:
                await db.execute(
                    "UPDATE deliveries SET turn_id=? WHERE platform=? AND delivery_key=?",
                    (turn_id, *delivery))
            return turn_id

    async def import_turns(
        self, key: ConversationKey, turns: Sequence[tuple[Turn, str | None]]
    ) -> int:
        """Store a thread's earlier messages (oldest first) as its history, in one transaction.
        Each (turn, delivery_key) with a key is recorded (as imported: its own event, if it
        comes, is still answered once); already-seen ones are skipped.
        Returns the number of turns stored."""
        stored = 0
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            for turn, delivery_key in turns:
                if delivery_key is not None:
                    cursor = await db.execute(
                        "INSERT OR IGNORE INTO deliveries (platform, delivery_key,"
                        " conversation_id, received_at, imported, state)"
                        " VALUES (?, ?, ?, ?, 1, 'imported')",
                        (key.platform, delivery_key, conversation, time.time()))
                    if cursor.rowcount != 1:
                        continue  # seen before: already in some history
                cursor = await db.execute(
                    "INSERT INTO turns (conversation_id, speaker, text, created_at)"
                    " VALUES (?,?,?,?)", (conversation, str(turn.speaker), turn.text, time.time()))
                if delivery_key is not None:
                    await db.execute(
                        "UPDATE deliveries SET turn_id=? WHERE platform=? AND delivery_key=?",
                        (cursor.lastrowid, key.platform, delivery_key))
                stored += 1
        return stored

    async def recent_turns(
        self, conversation: int, limit: int, before: int | None = None
    ) -> list[StoredTurn]:
        """Up to `limit` turns of the current history, newest first, older than `before`."""
        cursor = await self._db.execute(
            "SELECT t.id, t.speaker, t.text FROM turns t JOIN conversations c"
            " ON c.id = t.conversation_id WHERE t.conversation_id = ?"
            " AND t.id > c.history_start AND t.id < ? ORDER BY t.id DESC LIMIT ?",
            (conversation, before if before is not None else 2**62, limit))
        rows = await cursor.fetchall()
        return [StoredTurn(int(i), Turn(Speaker(s), t)) for i, s, t in rows]
