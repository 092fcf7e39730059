"""Deliveries (SQLite and PostgreSQL): the platform messages taken on for answering, and their
way to done.

A mixin of both engines' stores (history.py, postgres.py), which give it their connection,
transactions and conversations. Each transition of bot/ports/records.py's DeliveryState is
one method and one transaction: an UPDATE whose WHERE names the state it comes from and the
runner that took the delivery, so a transition that lost (a rival finished it, a deletion
withdrew it) changes nothing and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.conversation import ConversationKey, Speaker
from bot.errors import MessageWithdrawn, StorageError
from bot.ports.records import Delivery, DeliveryState, ImportedTurn
from storage.sql import SqlConnection, SqlRow

DELIVERY_SELECT = (
    "SELECT d.platform, d.delivery_key, d.conversation_id, c.workspace, c.channel, c.thread,"
    " d.state, d.received_at, d.turn_id, d.reply_ref, d.final, d.author, d.text,"
    " d.answer_id, d.replaces, d.asker, d.withdrawn, d.runner"
    " FROM deliveries d JOIN conversations c ON c.id = d.conversation_id")
_BY_KEY = " WHERE d.platform=? AND d.delivery_key=?"
UNFINISHED_STATES = "('accepted', 'shown', 'answering', 'ready', 'withdrawn')"
# the row of one delivery, as the runner that took it (None matches NULL); not IS NOT
# DISTINCT FROM, which SQLite speaks only from 3.39 (Ubuntu 22.04 has 3.37)
_MINE = ("platform=? AND delivery_key=?"
         " AND (runner = CAST(? AS TEXT) OR (runner IS NULL AND CAST(? AS TEXT) IS NULL))")


def delivery_of(row: SqlRow) -> Delivery:
    (platform, key, conversation, workspace, channel, thread, state, received, turn, ref, final,
     author, text, answer, replaces, asker, withdrawn, runner) = row
    return Delivery(str(platform), str(key), int(conversation),
                    ConversationKey(str(platform), str(workspace), str(channel), str(thread)),
                    DeliveryState(str(state)), float(received),
                    None if turn is None else int(turn),
                    None if ref is None else str(ref), None if final is None else str(final),
                    None if author is None else str(author), None if text is None else str(text),
                    None if answer is None else int(answer),
                    None if replaces is None else str(replaces),
                    None if asker is None else str(asker), bool(withdrawn),
                    None if runner is None else str(runner))


def _mine(delivery: Delivery) -> tuple[str, str, str | None, str | None]:
    """The parameters of `_MINE` (the runner twice)."""
    return (delivery.platform, delivery.delivery_key, delivery.runner, delivery.runner)


class DeliveryRecords:
    _db: SqlConnection
    _clock: Callable[[], float]

    def _transaction(self) -> AbstractAsyncContextManager[SqlConnection]:
        raise NotImplementedError

    async def record_sources(self, db: SqlConnection, platform: str, delivery_key: str,
                             sources: Sequence[str]) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:  # from the host store (TurnRecords); declared only for the type checker
        async def _conversation_id(self, db: SqlConnection, key: ConversationKey) -> int: ...

    @staticmethod
    async def _read(db: SqlConnection, platform: str, delivery_key: str) -> Delivery:
        row = await (await db.execute(DELIVERY_SELECT + _BY_KEY,
                                      (platform, delivery_key))).fetchone()
        if row is None:
            # (the same notice as an unexpected failure; a sweep tries again next time)
            raise StorageError(f"delivery {platform}/{delivery_key} is gone")
        return delivery_of(row)

    # ----- taking a message on ---------------------------------------------------------
    async def note_unread_files(self, platform: str, delivery_key: str,
                                names: Sequence[str]) -> None:
        """Message `delivery_key` has attached files not read yet: noted before it is
        recorded (a crash between leaves a harmless note), dropped by `files_read`."""
        async with self._transaction() as db:
            await db.execute("INSERT INTO unread_files (platform, delivery_key, names)"
                             " VALUES (?, ?, ?) ON CONFLICT (platform, delivery_key)"
                             " DO UPDATE SET names = excluded.names",
                             (platform, delivery_key, "\n".join(names)))

    async def unread_files(self, platform: str, delivery_key: str) -> tuple[str, ...]:
        row = await (await self._db.execute(
            "SELECT names FROM unread_files WHERE platform = ? AND delivery_key = ?",
            (platform, delivery_key))).fetchone()
        return tuple(str(row[0]).split("\n")) if row is not None else ()

    async def files_read(self, platform: str, delivery_key: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM unread_files WHERE platform = ? AND delivery_key = ?",
                             (platform, delivery_key))

    async def accept(self, key: ConversationKey, delivery_key: str, text: str,
                     author: str | None = None, asker: str | None = None,
                     sources: Sequence[str] = ()) -> Delivery | None:
        """(none | imported) -> accepted: record a platform message as taken on, with its
        text, in one transaction: from here on a crash cannot lose it. `sources`: the platform
        messages its text was taken from, when not the delivery itself (「rinna に聞く」), so
        their deletion reaches it. Returns its record, or None when it is finished (a retry or
        a redelivery). A record not finished (its first handling died) is returned as it
        stands, not fresh: `take` says who carries it on."""
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            cursor = await db.execute(
                "INSERT INTO deliveries (platform, delivery_key, conversation_id,"
                " received_at, state, text, author, asker)"
                " VALUES (?, ?, ?, ?, 'accepted', ?, ?, ?) ON CONFLICT DO NOTHING",
                (key.platform, delivery_key, conversation, self._clock(), text, author or None,
                 asker or None))
            fresh = cursor.rowcount == 1
            if not fresh:
                # read in with its thread before its own event came: answer it, once
                cursor = await db.execute(
                    "UPDATE deliveries SET state = 'accepted' WHERE platform=?"
                    " AND delivery_key=? AND state = 'imported'", (key.platform, delivery_key))
                fresh = cursor.rowcount == 1
            await self.record_sources(db, key.platform, delivery_key, sources)
            delivery = replace(await self._read(db, key.platform, delivery_key), fresh=fresh)
        return None if delivery.state.finished else delivery

    async def accept_reset(self, key: ConversationKey, delivery_key: str, notice: str | None,
                           author: str | None = None) -> Delivery | None:
        """(none | imported) -> ready (or answered, with `notice` None): take on a reset
        request and carry it out, in one transaction: the record (with `notice`, the
        confirmation to show, as its final text) and the moved history start, so a crash
        leaves either nothing or a done reset whose confirmation is still to be shown.
        Returns the record, or None when it was finished before. A record that is not finished
        is returned as it stands (not fresh): the reset was made then; never made twice."""
        state = DeliveryState.ANSWERED if notice is None else DeliveryState.READY
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            cursor = await db.execute(
                "INSERT INTO deliveries (platform, delivery_key, conversation_id,"
                " received_at, state, final, author) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (key.platform, delivery_key, conversation, self._clock(), str(state), notice,
                 author or None))
            fresh = cursor.rowcount == 1
            if not fresh:
                cursor = await db.execute(
                    "UPDATE deliveries SET state = ?, final = ? WHERE platform=?"
                    " AND delivery_key=? AND state = 'imported'",
                    (str(state), notice, key.platform, delivery_key))
                fresh = cursor.rowcount == 1
            if fresh:
                await db.execute(
                    "UPDATE conversations SET history_start ="
                    " (SELECT COALESCE(MAX(id), 0) FROM turns) WHERE id=?", (conversation,))
            delivery = replace(await self._read(db, key.platform, delivery_key), fresh=fresh)
        if delivery.state.finished:
            return delivery if fresh else None
        return delivery

    async def take(self, delivery: Delivery, runner: str) -> Delivery | None:
        """Claim an unfinished delivery for `runner` (one process's token): won when nobody
        took it or a runner other than `runner` did (that process is gone: one process per
        database). Returns the record as it stands, claimed; None when it is finished or
        `runner` has it already (a redelivery while it is being answered)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                f"UPDATE deliveries SET runner=? WHERE platform=? AND delivery_key=? AND state"
                f" IN {UNFINISHED_STATES} AND (runner IS NULL OR runner != ?)",
                (runner, delivery.platform, delivery.delivery_key, runner))
            if cursor.rowcount != 1:
                return None
            taken = await self._read(db, delivery.platform, delivery.delivery_key)
        return replace(taken, fresh=delivery.fresh)

    async def release(self, delivery: Delivery) -> bool:
        """Give up a taken, unfinished delivery (a shutdown interrupted it): the next process
        (or a redelivery) takes it over. Its state stays."""
        async with self._transaction() as db:
            cursor = await db.execute(f"UPDATE deliveries SET runner=NULL WHERE {_MINE}",
                                      _mine(delivery))
        return cursor.rowcount == 1

    # ----- on the way to an answer ------------------------------------------------------
    async def relocate(self, delivery: Delivery, key: ConversationKey) -> Delivery | None:
        """accepted -> accepted, in conversation `key`: a message recorded before its
        conversation was known (a slash command is recorded before its question is posted,
        the thread it starts). The placeholder conversation it was recorded in goes if empty.
        None when it is no longer accepted (or not the caller's)."""
        async with self._transaction() as db:
            conversation = await self._conversation_id(db, key)
            cursor = await db.execute(
                f"UPDATE deliveries SET conversation_id=? WHERE {_MINE} AND state='accepted'",
                (conversation, *_mine(delivery)))
            if cursor.rowcount != 1:
                return None
            if conversation != delivery.conversation:
                await db.execute(
                    "DELETE FROM conversations WHERE id=? AND NOT EXISTS (SELECT 1 FROM"
                    " deliveries WHERE conversation_id=?) AND NOT EXISTS (SELECT 1 FROM turns"
                    " WHERE conversation_id=?)", (delivery.conversation,) * 3)
            moved = await self._read(db, delivery.platform, delivery.delivery_key)
        return replace(moved, fresh=delivery.fresh)

    async def show_placeholder(self, delivery: Delivery, ref: str) -> bool:
        """accepted -> shown (shown or answering: stays, the new ref kept): where the reply's
        placeholder is, so a restart edits it rather than posting another."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET reply_ref=?, state = CASE state WHEN 'accepted'"
                f" THEN 'shown' ELSE state END WHERE {_MINE}"
                " AND state IN ('accepted', 'shown', 'answering')", (ref, *_mine(delivery)))
        return cursor.rowcount == 1

    async def begin_answer(self, delivery: Delivery,
                           earlier: Sequence[ImportedTurn] = ()) -> Delivery | None:
        """(accepted | shown) -> answering (answering stays: a restart answers again): the
        message's text moves from its record into the history, once; before it, `earlier`
        (the thread's earlier messages) when the conversation has nothing stored yet. One
        transaction. A withdrawn message raises MessageWithdrawn; None when it is no longer
        on its way (finished, or not the caller's)."""
        async with self._transaction() as db:
            current = await self._read(db, delivery.platform, delivery.delivery_key)
            if current.runner != delivery.runner:
                return None
            if current.state is DeliveryState.WITHDRAWN:
                raise MessageWithdrawn("its message was deleted while it waited")
            if current.state not in (DeliveryState.ACCEPTED, DeliveryState.SHOWN,
                                     DeliveryState.ANSWERING):
                return None
            turn_id = current.turn_id
            if turn_id is None:
                if earlier:
                    await self._import(db, current.key, current.conversation, earlier,
                                       only_into_empty=True)
                row = await (await db.execute(
                    "INSERT INTO turns (conversation_id, speaker, text, created_at, author)"
                    " VALUES (?,?,?,?,?) RETURNING id",
                    (current.conversation, str(Speaker.USER), current.text or "",
                     self._clock(), current.author))).fetchone()
                if row is None:  # the INSERT's RETURNING gives its row
                    raise StorageError("a stored turn vanished while it was recorded")
                turn_id = int(row[0])
            await db.execute(
                f"UPDATE deliveries SET turn_id=?, text=NULL, state='answering' WHERE {_MINE}",
                (turn_id, *_mine(delivery)))
        return replace(current, state=DeliveryState.ANSWERING, turn_id=turn_id, text=None,
                       fresh=delivery.fresh)

    async def store_answer(self, delivery: Delivery, answer: str, final: str) -> bool:
        """answering -> ready: the answer turn (unless empty) and the final text to show, in
        one transaction. A regeneration's answer supersedes the answer it redoes (kept, left
        out of prompts). False (nothing stored) when it is no longer answering."""
        async with self._transaction() as db:
            answer_id = None
            cursor = await db.execute(
                f"UPDATE deliveries SET final=?, state='ready' WHERE {_MINE}"
                " AND state='answering'", (final, *_mine(delivery)))
            if cursor.rowcount != 1:
                return False
            if answer:
                row = await (await db.execute(
                    "INSERT INTO turns (conversation_id, speaker, text, created_at)"
                    " VALUES (?,?,?,?) RETURNING id",
                    (delivery.conversation, str(Speaker.SYSTEM), answer,
                     self._clock()))).fetchone()
                if row is None:  # the INSERT's RETURNING gives its row
                    raise StorageError("a stored turn vanished while it was recorded")
                answer_id = int(row[0])
                await db.execute(f"UPDATE deliveries SET answer_id=? WHERE {_MINE}",
                                 (answer_id, *_mine(delivery)))
            if delivery.replaces is not None:
                await db.execute(
                    "UPDATE turns SET superseded = 1 WHERE id = (SELECT answer_id FROM"
                    " deliveries WHERE platform=? AND delivery_key=?)",
                    (delivery.platform, delivery.replaces))
        return True

    async def finish(self, delivery: Delivery, *, failed: bool = False) -> bool:
        """(any unfinished) -> answered, or failed (ended with a notice): the final text or
        the notice is shown; the record keeps no text. False when it was finished already or
        is not the caller's."""
        state = DeliveryState.FAILED if failed else DeliveryState.ANSWERED
        async with self._transaction() as db:
            cursor = await db.execute(
                f"UPDATE deliveries SET state=?, final=NULL, text=NULL, runner=NULL"
                f" WHERE {_MINE} AND state IN {UNFINISHED_STATES}", (str(state), *_mine(delivery)))
        return cursor.rowcount == 1

    # ----- reading --------------------------------------------------------------------
    async def delivery(self, platform: str, delivery_key: str) -> Delivery | None:
        row = await (await self._db.execute(DELIVERY_SELECT + _BY_KEY,
                                            (platform, delivery_key))).fetchone()
        return None if row is None else delivery_of(row)

    async def unfinished(self, platform: str) -> list[Delivery]:
        """Messages of `platform` taken on but not finished yet, oldest first."""
        rows = await (await self._db.execute(
            DELIVERY_SELECT + f" WHERE d.platform=? AND d.state IN {UNFINISHED_STATES}"
            " ORDER BY d.received_at", (platform,))).fetchall()
        return [delivery_of(row) for row in rows]

    # ----- a thread's earlier messages ----------------------------------------------------
    async def _import(self, db: SqlConnection, key: ConversationKey, conversation: int,
                      turns: Sequence[ImportedTurn], *, only_into_empty: bool = False) -> int:
        """Store a thread's earlier messages (oldest first) in `conversation`, inside the
        caller's transaction; with `only_into_empty`, only if nothing was ever stored there.
        Each (turn, delivery_key) with a key is recorded as imported (its own event, if it
        comes, is still answered once); already-seen ones are skipped. An item may carry a
        third element, the author's platform user id. Returns the number of turns stored."""
        if only_into_empty and await (await db.execute(
                "SELECT 1 FROM turns WHERE conversation_id=? LIMIT 1",
                (conversation,))).fetchone() is not None:
            return 0
        stored = 0
        for item in turns:
            turn, delivery_key = item[0], item[1]
            author = item[2] if len(item) > 2 else None
            if delivery_key is not None:
                cursor = await db.execute(
                    "INSERT INTO deliveries (platform, delivery_key,"
                    " conversation_id, received_at, state)"
                    " VALUES (?, ?, ?, ?, 'imported') ON CONFLICT DO NOTHING",
                    (key.platform, delivery_key, conversation, self._clock()))
                if cursor.rowcount != 1:
                    continue  # seen before: already in some history
            row = await (await db.execute(
                "INSERT INTO turns (conversation_id, speaker, text, created_at, author)"
                " VALUES (?,?,?,?,?) RETURNING id",
                (conversation, str(turn.speaker), turn.text, self._clock(),
                 author or None))).fetchone()
            if row is None:  # the INSERT's RETURNING gives its row
                raise StorageError("a stored turn vanished while it was recorded")
            if delivery_key is not None:
                await db.execute(
                    "UPDATE deliveries SET turn_id=? WHERE platform=? AND delivery_key=?",
                    (int(row[0]), key.platform, delivery_key))
            stored += 1
        return stored
