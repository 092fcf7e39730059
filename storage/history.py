"""Conversation histories in SQLite through aiosqlite: WAL, foreign keys, versioned schema.

Every write is one transaction. One connection is shared by the whole process; a lock keeps
transactions from interleaving on it. A redelivered platform message is recognised by its
(platform, delivery_key) row and never stored or answered twice; a reset moves the point where
the history starts and keeps every old row.

Private data: the store opens only a SQLite database or a path that does not exist yet, and
keeps its files private (storage/files.py). Deleted text is overwritten
(`secure_delete`) and, after every deletion or edit, the WAL is checkpointed and truncated, so
the text is gone from the files, not only unlinked. Each user turn keeps its author's platform
id, so one person's messages can be exported or forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiosqlite

from bot.conversation import ConversationKey, Speaker, Turn
from bot.errors import DatabasePathError, StorageError
from bot.ports.records import Claim, Delivery, ImportedTurn, StoredTurn
from storage.community import CommunityRecords
from storage.deliveries import DELIVERY_SELECT, UNFINISHED_STATES, DeliveryRecords, delivery_of
from storage.files import prepare_database_file
from storage.private import PrivateRecords
from storage.schema import MIGRATIONS, SCHEMA_VERSION
from storage.summaries import SummaryRecords

log = logging.getLogger(__name__)



class HistoryStore(PrivateRecords, DeliveryRecords, SummaryRecords, CommunityRecords):
    def __init__(self, connection: aiosqlite.Connection, path: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = connection
        self.path = path
        self._write = asyncio.Lock()
        self._clock = clock

    @classmethod
    async def open(cls, path: str | Path, *,
                   clock: Callable[[], float] = time.time) -> HistoryStore:
        """Open (creating it privately if needed) the database at `path`; `clock` stamps the
        turns (seconds since the epoch; tests pass their own)."""
        path = Path(path)
        try:
            if str(path) != ":memory:":
                prepare_database_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except DatabasePathError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"DATABASE_PATH={path}: cannot open the database ({exc}); "
                "set DATABASE_PATH to a file in a writable directory"
            ) from None
        store = cls(db, path, clock)
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
        await self._db.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten
        async with self._transaction() as db:
            row = await (await db.execute("PRAGMA user_version")).fetchone()
            version = int(row[0]) if row is not None else 0
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
            (key.platform, key.workspace, key.channel, key.thread, self._clock()),
        )
        row = await (await db.execute(
            "SELECT id FROM conversations WHERE platform=? AND workspace=? AND channel=?"
            " AND thread=?", (key.platform, key.workspace, key.channel, key.thread))).fetchone()
        if row is None:  # inserted just above, in this transaction
            raise StorageError(f"conversation {key} vanished while it was recorded")
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
                (key.platform, delivery_key, conversation, self._clock()))
            if cursor.rowcount == 1:
                return Claim(conversation)
            row = await (await db.execute(
                "UPDATE deliveries SET state = 'answered' WHERE platform=?"
                " AND delivery_key=? AND state = 'imported' RETURNING conversation_id, turn_id",
                (key.platform, delivery_key))).fetchone()
            return None if row is None else Claim(int(row[0]), row[1])

    async def has_turns(self, conversation: int) -> bool:
        """Whether anything was ever stored in the conversation (resets included)."""
        row = await (await self._db.execute(
            "SELECT 1 FROM turns WHERE conversation_id=? LIMIT 1", (conversation,))).fetchone()
        return row is not None

    async def add_turn(
        self, conversation: int, turn: Turn, delivery: tuple[str, str] | None = None,
        *, author: str | None = None,
    ) -> int:
        """Store one turn; `delivery` (platform, key) links the platform message to it;
        `author` is the writer's platform user id (user turns)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO turns (conversation_id, speaker, text, created_at, author)"
                " VALUES (?,?,?,?,?)",
                (conversation, str(turn.speaker), turn.text, self._clock(), author or None))
            if cursor.lastrowid is None:
                raise StorageError("a stored turn got no row id")
            turn_id = cursor.lastrowid
            if delivery is not None:
                await db.execute(
                    "UPDATE deliveries SET turn_id=? WHERE platform=? AND delivery_key=?",
                    (turn_id, *delivery))
            return turn_id

    async def import_turns(
        self, key: ConversationKey, turns: Sequence[ImportedTurn]
    ) -> int:
        """Store a thread's earlier messages (oldest first) as its history, in one transaction
        (see DeliveryRecords._import). Returns the number of turns stored."""
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            return await self._import(db, key, conversation, turns)

    async def recent_turns(
        self, conversation: int, limit: int, before: int | None = None
    ) -> list[StoredTurn]:
        """Up to `limit` turns of the current history, newest first, older than `before`."""
        cursor = await self._db.execute(
            "SELECT t.id, t.speaker, t.text FROM turns t JOIN conversations c"
            " ON c.id = t.conversation_id WHERE t.conversation_id = ?"
            " AND t.id > c.history_start AND t.id < ? AND NOT t.superseded"
            " ORDER BY t.id DESC LIMIT ?",
            (conversation, before if before is not None else 2**62, limit))
        rows = await cursor.fetchall()
        return [StoredTurn(int(i), Turn(Speaker(s), t)) for i, s, t in rows]

    # ----- answers: the buttons on them, feedback, counts ---------------------------------
    async def answer_at(self, platform: str, reply_ref: str) -> Delivery | None:
        """The message answered by the reply whose main message is `reply_ref` (a ref as its
        sink named it: unique within its platform)."""
        row = await (await self._db.execute(
            DELIVERY_SELECT + " WHERE d.platform=? AND d.reply_ref=?"
            " ORDER BY d.received_at DESC LIMIT 1", (platform, reply_ref))).fetchone()
        return None if row is None else delivery_of(row)

    async def previous_answer(self, conversation: int, delivery_key: str) -> Delivery | None:
        """The newest finished answer of the conversation other than `delivery_key`'s, with
        a message (the one whose 「もう一度」 goes when a newer question comes)."""
        row = await (await self._db.execute(
            DELIVERY_SELECT + " WHERE d.conversation_id=? AND d.delivery_key != ?"
            " AND d.reply_ref IS NOT NULL AND d.turn_id IS NOT NULL AND d.state = 'answered'"
            " ORDER BY COALESCE(d.answer_id, d.turn_id) DESC, d.received_at DESC LIMIT 1",
            (conversation, delivery_key))).fetchone()
        return None if row is None else delivery_of(row)

    async def latest_answer(self, conversation: int, turn_id: int) -> Delivery | None:
        """The newest record answering question turn `turn_id`: one being written first (at
        most one per conversation), then the one whose answer turn is newest (a question
        answered again after an edit or 「もう一度」 has several records)."""
        row = await (await self._db.execute(
            DELIVERY_SELECT + " WHERE d.conversation_id=? AND d.turn_id=?"
            f" ORDER BY d.state IN {UNFINISHED_STATES} DESC,"
            " COALESCE(d.answer_id, 0) DESC, d.received_at DESC LIMIT 1",
            (conversation, turn_id))).fetchone()
        return None if row is None else delivery_of(row)

    async def accept_regenerate(self, answer: Delivery, request_key: str) -> Delivery | None:
        """Take on a request (`request_key`, unique per press) to answer `answer`'s question
        again, in one transaction, only while that answer is the newest thing in its
        conversation's history and nothing there is being answered. Returns the new record,
        the existing one for a repeated request (not fresh), or None when refused."""
        async with self._transaction() as db:
            row = await (await db.execute(
                DELIVERY_SELECT + " WHERE d.platform=? AND d.delivery_key=?",
                (answer.platform, request_key))).fetchone()
            if row is not None:
                return delivery_of(row)
            busy = await (await db.execute(
                "SELECT 1 FROM deliveries WHERE conversation_id=? AND state IN"
                f" {UNFINISHED_STATES} LIMIT 1", (answer.conversation,))).fetchone()
            question = await self._newest_question(db, answer.platform, answer.delivery_key)
            if busy is not None or question is None:
                return None
            await db.execute(
                "INSERT INTO deliveries (platform, delivery_key, conversation_id, received_at,"
                " state, turn_id, author, asker, replaces)"
                " VALUES (?, ?, ?, ?, 'accepted', ?, ?, ?, ?)",
                (answer.platform, request_key, answer.conversation, self._clock(), question,
                 answer.author, answer.asker, answer.delivery_key))
            row = await (await db.execute(
                DELIVERY_SELECT + " WHERE d.platform=? AND d.delivery_key=?",
                (answer.platform, request_key))).fetchone()
        if row is None:  # inserted just above, in this transaction
            raise StorageError(f"request {request_key} vanished while it was recorded")
        return replace(delivery_of(row), fresh=True)

    async def still_newest(self, request: Delivery) -> Delivery | None:
        """For a regeneration about to run: the answer it redoes, if that is still the newest
        turn of the conversation (None: a newer question got there first)."""
        if request.replaces is None:
            return None
        question = await self._newest_question(self._db, request.platform, request.replaces)
        return None if question is None else await self.delivery(request.platform,
                                                                  request.replaces)

    @staticmethod
    async def _newest_question(db: aiosqlite.Connection, platform: str,
                               delivery_key: str) -> int | None:
        """The user turn of the answered message `delivery_key`, if its answer (or, for an
        empty answer, the question itself) is the newest turn of the current history."""
        row = await (await db.execute(
            "SELECT d.answer_id, d.turn_id, d.state, (SELECT MAX(t.id) FROM turns t"
            " WHERE t.conversation_id = c.id AND t.id > c.history_start AND NOT t.superseded)"
            " FROM deliveries d JOIN conversations c ON c.id = d.conversation_id"
            " WHERE d.platform=? AND d.delivery_key=?", (platform, delivery_key))).fetchone()
        if row is None:
            return None
        answer, question, state, newest = row
        if state != "answered" or question is None or newest is None:
            return None
        return int(question) if newest == (answer if answer is not None else question) else None

    async def set_feedback(self, answer: Delivery, user: str, value: str) -> str | None:
        """One person's vote on an answer ("good" or "bad"); a second vote replaces the first.
        Returns the vote it replaced (None: a first vote)."""
        async with self._transaction() as db:
            row = await (await db.execute(
                "SELECT value FROM feedback WHERE platform=? AND delivery_key=? AND user=?",
                (answer.platform, answer.delivery_key, user))).fetchone()
            await db.execute(
                "INSERT INTO feedback (platform, delivery_key, user, value, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, delivery_key, user)"
                " DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
                (answer.platform, answer.delivery_key, user, value, self._clock()))
        return None if row is None else str(row[0])

    async def feedback_counts(self, platform: str | None = None,
                              delivery_key: str | None = None) -> dict[str, int]:
        """Votes by value ("good", "bad"): all, one platform's, or one answer's."""
        rows = await (await self._db.execute(
            "SELECT value, COUNT(*) FROM feedback WHERE (? IS NULL OR platform = ?)"
            " AND (? IS NULL OR delivery_key = ?) GROUP BY value",
            (platform, platform, delivery_key, delivery_key))).fetchall()
        counts = {"good": 0, "bad": 0}
        counts.update({str(value): int(count) for value, count in rows})
        return counts

    async def answers_since(self, since: float) -> int:
        """Answers the bot gave (regenerations included) since `since` (epoch seconds)."""
        row = await (await self._db.execute(
            "SELECT COUNT(*) FROM deliveries d JOIN turns t ON t.id = d.answer_id"
            " WHERE t.created_at >= ?", (since,))).fetchone()
        return int(row[0]) if row else 0

    async def scrub(self, tries: int = 1) -> bool:
        """Move everything from the WAL into the database file and truncate the WAL, so text
        deleted (and overwritten, `secure_delete`) is not left in older WAL frames. Waits for
        readers (other processes on the same file) up to the busy timeout, `tries` times; the
        running bot tries once (its writes wait meanwhile), `forget` a few times.
        Returns whether the WAL is empty now; logs a warning when it is not."""
        if str(self.path) == ":memory:":
            return True
        for _ in range(tries):
            async with self._write:
                row = await (await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")).fetchone()
            if row is not None and row[0] == 0:
                return True
        log.warning("%s: the WAL could not be emptied (a reader kept it busy); deleted text "
                    "stays in %s-wal until the next checkpoint", self.path, self.path.name)
        return False
