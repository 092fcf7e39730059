"""Conversations, turns and answers (the buttons on them, feedback, counts): the part of the
store both engines share. A mixin of the engine's store (storage/history.py for SQLite,
storage/postgres.py for PostgreSQL), which gives it its connection (`_db`), transactions and
clock. The SQL is the subset both engines speak, SQLite from 3.35 (ON CONFLICT, RETURNING,
CAST(? AS TEXT); not IS NOT DISTINCT FROM, which needs 3.39); PostgreSQL's connection turns
the `?` into `$n` (storage/pg_wire.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.conversation import ConversationKey, Speaker, Turn
from bot.errors import StorageError
from bot.ports.records import Delivery, ImportedTurn, StoredTurn
from storage.deliveries import DELIVERY_SELECT, UNFINISHED_STATES, delivery_of
from storage.sql import SqlConnection


class TurnRecords:
    _db: SqlConnection
    _clock: Callable[[], float]

    def _transaction(self) -> AbstractAsyncContextManager[SqlConnection]:
        raise NotImplementedError

    # From the host store (DeliveryRecords), declared only for the type checker: a runtime
    # stub here would shadow them, TurnRecords coming first in the stores' bases.
    if TYPE_CHECKING:
        async def _import(self, db: SqlConnection, key: ConversationKey, conversation: int,
                          turns: Sequence[ImportedTurn], *,
                          only_into_empty: bool = False) -> int: ...

        async def delivery(self, platform: str, delivery_key: str) -> Delivery | None: ...

    # ----- conversations ---------------------------------------------------------------
    async def _conversation_id(self, db: SqlConnection, key: ConversationKey) -> int:
        await db.execute(
            "INSERT INTO conversations (platform, workspace, channel, thread, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
    async def has_turns(self, conversation: int) -> bool:
        """Whether anything was ever stored in the conversation (resets included)."""
        row = await (await self._db.execute(
            "SELECT 1 FROM turns WHERE conversation_id=? LIMIT 1", (conversation,))).fetchone()
        return row is not None

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
        # history_start by a subquery, not a join: PostgreSQL then walks the index backwards
        # from `before` even while its statistics still think the conversation is small
        cursor = await self._db.execute(
            "SELECT t.id, t.speaker, t.text FROM turns t WHERE t.conversation_id = ?"
            " AND t.id > (SELECT history_start FROM conversations WHERE id = ?)"
            " AND t.id < ? AND t.superseded = 0 ORDER BY t.id DESC LIMIT ?",
            (conversation, conversation, before if before is not None else 2**62, limit))
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
    async def _newest_question(db: SqlConnection, platform: str,
                               delivery_key: str) -> int | None:
        """The user turn of the answered message `delivery_key`, if its answer (or, for an
        empty answer, the question itself) is the newest turn of the current history."""
        row = await (await db.execute(
            "SELECT d.answer_id, d.turn_id, d.state, (SELECT MAX(t.id) FROM turns t"
            " WHERE t.conversation_id = c.id AND t.id > c.history_start AND t.superseded = 0)"
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
                'SELECT value FROM feedback WHERE platform=? AND delivery_key=? AND "user"=?',
                (answer.platform, answer.delivery_key, user))).fetchone()
            await db.execute(
                'INSERT INTO feedback (platform, delivery_key, "user", value, created_at)'
                ' VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, delivery_key, "user")'
                " DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
                (answer.platform, answer.delivery_key, user, value, self._clock()))
        return None if row is None else str(row[0])

    async def feedback_counts(self, platform: str | None = None,
                              delivery_key: str | None = None) -> dict[str, int]:
        """Votes by value ("good", "bad"): all, one platform's, or one answer's."""
        rows = await (await self._db.execute(
            "SELECT value, COUNT(*) FROM feedback WHERE (CAST(? AS TEXT) IS NULL OR platform = ?)"
            " AND (CAST(? AS TEXT) IS NULL OR delivery_key = ?) GROUP BY value",
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

