"""A conversation's rolling summary and its window notice (SQLite and PostgreSQL): a mixin of
both engines' stores (history.py, postgres.py), which give it their connection and
transactions.

A summary stands for the turns of the current history with id <= `upto`. It is saved only if
what it was written from is still there unchanged (`covered`, bot.ports.records.fingerprint)
and it builds on the summary still stored (`previous`): a summary written while one of its
turns was edited, deleted or forgotten, or while the conversation was reset, is never saved.
Edits, deletions, `forget` and retention delete the summaries that hold the text they touch
(storage/private.py), so the next answer reads the turns and a new summary is written later.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from bot.conversation import Speaker, Turn
from bot.ports.records import StoredTurn, Summary, fingerprint
from storage.sql import SqlConnection


def stale_summaries(turn_ids: str) -> str:
    """A statement deleting every summary that covers one of the turns `turn_ids` (an SQL
    subquery) selects: run before those turns are deleted or changed."""
    return ("DELETE FROM summaries WHERE EXISTS (SELECT 1 FROM turns t WHERE"
            " t.conversation_id = summaries.conversation_id AND t.id <= summaries.upto"
            f" AND t.id IN ({turn_ids}))")


class SummaryRecords:
    _db: SqlConnection
    _clock: Callable[[], float]

    def _transaction(self) -> AbstractAsyncContextManager[SqlConnection]:
        raise NotImplementedError


    async def summary(self, conversation: int) -> Summary | None:
        """The conversation's summary, if one was written since its last reset."""
        row = await (await self._db.execute(
            "SELECT s.text, s.upto FROM summaries s JOIN conversations c"
            " ON c.id = s.conversation_id WHERE s.conversation_id = ?"
            " AND s.since = c.history_start", (conversation,))).fetchone()
        return None if row is None else Summary(str(row[0]), int(row[1]))

    async def save_summary(self, conversation: int, text: str, upto: int,
                           previous: int | None, covered: str) -> bool:
        """Store `text` as the summary of the turns up to `upto`, written from the summary
        up to `previous` (None: none) and the turns after it whose fingerprint is `covered`.
        False (nothing saved) when either changed meanwhile."""
        async with self._transaction() as db:
            row = await (await db.execute(
                "SELECT history_start FROM conversations WHERE id = ?",
                (conversation,))).fetchone()
            if row is None:
                return False
            since = int(row[0])
            current = await (await db.execute(
                "SELECT upto FROM summaries WHERE conversation_id = ? AND since = ?",
                (conversation, since))).fetchone()
            if (None if current is None else int(current[0])) != previous:
                return False
            rows = await (await db.execute(
                "SELECT id, speaker, text FROM turns WHERE conversation_id = ? AND id > ?"
                " AND id <= ? AND superseded = 0 ORDER BY id",
                (conversation, max(since, previous or 0), upto))).fetchall()
            turns = [StoredTurn(int(i), Turn(Speaker(s), str(t))) for i, s, t in rows]
            if fingerprint(turns) != covered:
                return False
            await db.execute("DELETE FROM summaries WHERE conversation_id = ?", (conversation,))
            await db.execute(
                "INSERT INTO summaries (conversation_id, text, upto, since, created_at)"
                " VALUES (?,?,?,?,?)", (conversation, text, upto, since, self._clock()))
            return True

    async def drop_summary(self, conversation: int) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM summaries WHERE conversation_id = ?", (conversation,))

    async def count_turns(self, conversation: int, after: int | None, before: int) -> int:
        """Turns of the current history with `after` < id < `before` (regenerated answers'
        superseded turns not counted)."""
        row = await (await self._db.execute(
            "SELECT COUNT(*) FROM turns t JOIN conversations c ON c.id = t.conversation_id"
            " WHERE t.conversation_id = ? AND t.id > c.history_start AND t.id > ?"
            " AND t.id < ? AND t.superseded = 0",
            (conversation, after if after is not None else 0, before))).fetchone()
        return int(row[0]) if row is not None else 0  # COUNT(*) always has its row

    async def mark_summary_request(self, platform: str, delivery_key: str) -> None:
        """The message `delivery_key` asks for a summary: noted before it is recorded (a
        crash between leaves a harmless note), so its record is always read as one."""
        async with self._transaction() as db:
            await db.execute("INSERT INTO summary_requests (platform, delivery_key)"
                             " VALUES (?, ?) ON CONFLICT DO NOTHING", (platform, delivery_key))

    async def is_summary_request(self, platform: str, delivery_key: str) -> bool:
        row = await (await self._db.execute(
            "SELECT 1 FROM summary_requests WHERE platform = ? AND delivery_key = ?",
            (platform, delivery_key))).fetchone()
        return row is not None

    async def note_window_notice(self, conversation: int) -> bool:
        """True the first time since the conversation's last reset (the notice is then
        shown); False after that."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO window_notices (conversation_id, since) SELECT id, history_start"
                " FROM conversations WHERE id = ? ON CONFLICT (conversation_id) DO UPDATE"
                " SET since = excluded.since WHERE window_notices.since != excluded.since",
                (conversation,))
            return cursor.rowcount == 1
