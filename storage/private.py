"""People's text wherever the store holds it: platform deletions and edits, `forget`, `export`,
retention. A mixin of both engines' stores (history.py, postgres.py), which give it their
connection, transactions and `scrub` (SQLite: overwrite and empty the WAL; PostgreSQL: VACUUM).

A person's text is in one of two places: a stored turn, or a message still waiting to be
answered (its delivery's `text`, until its user turn is stored: queued behind others,
deferred by a shutdown). A platform message is found by its own delivery key, or by the
`sources` of a delivery built from it (「rinna に聞く」: the answer's delivery is the button
press, its text the message asked about). A deleted waiting message is withdrawn: its text is
gone at once and its delivery is answered with a short notice instead; an edited one waits
with its new text; `forget --user` withdraws that person's waiting messages too, and
`export --user` lists them. A rolling summary holding a touched text is deleted with it
(storage/summaries.py): `forget --user` deletes every summary that person's messages are in.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from bot.ports.records import AuthoredTurn, Vote
from storage.sql import SqlConnection
from storage.summaries import stale_summaries

# The deliveries a platform message reaches: its own, and those built from it.
_REACHED = ("SELECT delivery_key FROM deliveries WHERE platform=? AND delivery_key=?"
            " UNION SELECT delivery_key FROM sources WHERE platform=? AND source_key=?")
# A delivery whose text still waits for its user turn.
_WAITING = ("turn_id IS NULL AND text IS NOT NULL AND withdrawn = 0"
            " AND state IN ('accepted', 'shown')")


class PrivateRecords:
    _db: SqlConnection

    def _transaction(self) -> AbstractAsyncContextManager[SqlConnection]:
        raise NotImplementedError

    async def scrub(self, tries: int = 1) -> bool:
        raise NotImplementedError

    @staticmethod
    async def record_sources(db: SqlConnection, platform: str, delivery_key: str,
                             sources: Sequence[str]) -> None:
        """The platform messages a delivery's text was built from (besides itself)."""
        await db.executemany(
            "INSERT INTO sources (platform, source_key, delivery_key) VALUES (?,?,?)"
            " ON CONFLICT DO NOTHING",
            [(platform, source, delivery_key) for source in sources if source != delivery_key])

    async def delete_delivered(self, platform: str, delivery_key: str) -> int:
        """The platform message was deleted: delete every turn stored from it, and withdraw
        every delivery of it still waiting (its text gone; answered with a notice). The
        delivery rows stay, so a redelivery is still not answered. Returns how many texts."""
        reached = (platform, delivery_key, platform, delivery_key)
        async with self._transaction() as db:
            await db.execute(stale_summaries(
                "SELECT turn_id FROM deliveries WHERE platform=?"
                f" AND delivery_key IN ({_REACHED})"),
                (platform, *reached))
            cursor = await db.execute(
                "DELETE FROM turns WHERE id IN (SELECT turn_id FROM deliveries WHERE platform=?"
                f" AND delivery_key IN ({_REACHED}))", (platform, *reached))
            deleted = cursor.rowcount
            cursor = await db.execute(
                "UPDATE deliveries SET text=NULL, withdrawn=1, state='withdrawn' WHERE"
                " platform=? AND"
                f" delivery_key IN ({_REACHED}) AND {_WAITING}", (platform, *reached))
            deleted += cursor.rowcount
        if deleted:
            await self.scrub()
        return deleted

    async def edit_delivered(self, platform: str, delivery_key: str, text: str) -> bool:
        """The platform message was edited: every turn stored from it, and every delivery of
        it still waiting, takes the new text. Returns whether a text changed."""
        reached = (platform, delivery_key, platform, delivery_key)
        async with self._transaction() as db:
            await db.execute(stale_summaries(
                "SELECT turn_id FROM deliveries d JOIN turns t ON t.id = d.turn_id WHERE"
                f" t.text != ? AND d.platform=? AND d.delivery_key IN ({_REACHED})"),
                (text, platform, *reached))
            cursor = await db.execute(
                "UPDATE turns SET text=? WHERE text != ? AND id IN (SELECT turn_id FROM"
                f" deliveries WHERE platform=? AND delivery_key IN ({_REACHED}))",
                (text, text, platform, *reached))
            changed = cursor.rowcount
            cursor = await db.execute(
                "UPDATE deliveries SET text=? WHERE text != ? AND platform=? AND"
                f" delivery_key IN ({_REACHED}) AND {_WAITING}", (text, text, platform, *reached))
            changed += cursor.rowcount
        if changed:
            await self.scrub()
        return changed > 0

    async def author_turns(self, author: str, platform: str | None = None) -> list[AuthoredTurn]:
        """Every stored message of one person (oldest first), on one platform or all."""
        cursor = await self._db.execute(
            "SELECT t.id, c.platform, c.workspace, c.channel, c.thread, t.created_at, t.text"
            " FROM turns t JOIN conversations c ON c.id = t.conversation_id"
            " WHERE t.author = ? AND (CAST(? AS TEXT) IS NULL OR c.platform = ?) ORDER BY t.id",
            (author, platform, platform))
        rows = await cursor.fetchall()
        return [AuthoredTurn(int(i), p, w, c, th, float(at), text)
                for i, p, w, c, th, at, text in rows]

    async def author_waiting(self, author: str,
                             platform: str | None = None) -> list[AuthoredTurn]:
        """Every message of one person still waiting to be answered (oldest first)."""
        cursor = await self._db.execute(
            "SELECT c.platform, c.workspace, c.channel, c.thread, d.received_at, d.text"
            " FROM deliveries d JOIN conversations c ON c.id = d.conversation_id"
            f" WHERE d.author = ? AND (CAST(? AS TEXT) IS NULL OR d.platform = ?) AND {_WAITING}"
            " ORDER BY d.received_at", (author, platform, platform))
        return [AuthoredTurn(None, p, w, c, th, float(at), text, waiting=True)
                for p, w, c, th, at, text in await cursor.fetchall()]

    async def author_votes(self, author: str, platform: str | None = None) -> list[Vote]:
        """Every 👍/👎 of one person (oldest first), on one platform or all."""
        cursor = await self._db.execute(
            'SELECT platform, delivery_key, value, created_at FROM feedback WHERE "user" = ?'
            " AND (CAST(? AS TEXT) IS NULL OR platform = ?) ORDER BY created_at",
            (author, platform, platform))
        return [Vote(str(p), str(k), str(v), float(at)) for p, k, v, at in await cursor.fetchall()]

    async def forget_author(self, author: str, platform: str | None = None) -> int:
        """Delete every message of one person, stored or still waiting, their text overwritten
        in the files. Returns the number of messages deleted."""
        async with self._transaction() as db:
            await db.execute(stale_summaries(
                "SELECT id FROM turns WHERE author = ? AND (CAST(? AS TEXT) IS NULL"
                " OR conversation_id IN (SELECT id FROM conversations WHERE platform = ?))"),
                (author, platform, platform))
            cursor = await db.execute(
                "DELETE FROM turns WHERE author = ? AND (CAST(? AS TEXT) IS NULL"
                " OR conversation_id IN (SELECT id FROM conversations WHERE platform = ?))",
                (author, platform, platform))
            deleted = cursor.rowcount
            cursor = await db.execute(
                "UPDATE deliveries SET text = NULL, withdrawn = 1, state = 'withdrawn'"
                " WHERE author = ?"
                f" AND (CAST(? AS TEXT) IS NULL OR platform = ?) AND {_WAITING}",
                (author, platform, platform))
            deleted += cursor.rowcount
            await db.execute(
                'DELETE FROM feedback WHERE "user" = ?'
                " AND (CAST(? AS TEXT) IS NULL OR platform = ?)",
                (author, platform, platform))
            await db.execute(  # the names of their files not read yet
                "DELETE FROM unread_files WHERE EXISTS (SELECT 1 FROM deliveries d WHERE"
                " d.platform = unread_files.platform AND d.delivery_key ="
                " unread_files.delivery_key AND d.author = ?"
                " AND (CAST(? AS TEXT) IS NULL OR d.platform = ?))",
                (author, platform, platform))
            for column in ("author", "asker"):  # who asked what, in the delivery records
                await db.execute(
                    f"UPDATE deliveries SET {column} = NULL WHERE {column} = ?"
                    " AND (CAST(? AS TEXT) IS NULL OR platform = ?)", (author, platform, platform))
        await self.scrub()
        return deleted

    async def delete_older_than(self, cutoff: float) -> int:
        """Delete every turn stored before `cutoff` (seconds since the epoch): RETENTION_DAYS."""
        async with self._transaction() as db:
            await db.execute(stale_summaries("SELECT id FROM turns WHERE created_at < ?"),
                             (cutoff,))
            cursor = await db.execute("DELETE FROM turns WHERE created_at < ?", (cutoff,))
            deleted = cursor.rowcount
        if deleted:
            await self.scrub()
        return deleted

