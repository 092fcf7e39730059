"""Community settings (SQLite and PostgreSQL): values per scope, and an audit row for every
change, written in the same transaction. A mixin of both engines' stores (storage/history.py,
storage/postgres.py), which give it their connection, transactions and clock. Implements
bot/ports/community.py's CommunityStore.

One process owns a SQLite database (as for the conversation locks), so a change is announced
to this process's listeners after it commits; PostgreSQL announces it with NOTIFY instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

from bot.ports.community import ChangeListener, Scope, SettingChange
from storage.sql import SqlConnection, SqlRow

log = logging.getLogger(__name__)

_SCOPE = "platform=? AND workspace=? AND channel=? AND thread=?"
_AUDIT = "SELECT platform, workspace, channel, thread, key, old, new, actor, created_at" \
         " FROM settings_audit"


def _parts(scope: Scope) -> tuple[str, str, str, str]:
    return scope.platform, scope.workspace, scope.channel, scope.thread


def _change(row: SqlRow) -> SettingChange:
    platform, workspace, channel, thread, key, old, new, actor, created = row
    return SettingChange(Scope(str(platform), str(workspace), str(channel), str(thread)),
                         str(key), None if old is None else str(old),
                         None if new is None else str(new), str(actor),
                         float(created))


class CommunityRecords:
    _db: SqlConnection
    _clock: Callable[[], float]
    _listeners: list[ChangeListener]

    def _transaction(self) -> AbstractAsyncContextManager[SqlConnection]:
        raise NotImplementedError

    def on_change(self, listener: ChangeListener) -> None:
        if not hasattr(self, "_listeners"):
            self._listeners = []
        self._listeners.append(listener)

    async def scope_values(self, scopes: Sequence[Scope]) -> dict[Scope, dict[str, str]]:
        found: dict[Scope, dict[str, str]] = {}
        for scope in scopes:
            rows = await (await self._db.execute(
                f"SELECT key, value FROM community_settings WHERE {_SCOPE}",
                _parts(scope))).fetchall()
            if rows:
                found[scope] = {str(key): str(value) for key, value in rows}
        return found

    async def configured_scopes(self, platform: str, workspace: str) -> list[Scope]:
        rows = await (await self._db.execute(
            "SELECT DISTINCT channel, thread FROM community_settings WHERE platform=? AND"
            " workspace=? ORDER BY channel, thread", (platform, workspace))).fetchall()
        return [Scope(platform, workspace, str(channel), str(thread)) for channel, thread in rows]

    async def change_settings(self, scope: Scope, values: Mapping[str, str | None],
                              actor: str) -> list[SettingChange]:
        now = self._clock()
        changes: list[SettingChange] = []
        async with self._transaction() as db:
            for key, new in values.items():
                row = await (await db.execute(
                    f"SELECT value FROM community_settings WHERE {_SCOPE} AND key=?",
                    (*_parts(scope), key))).fetchone()
                old = None if row is None else str(row[0])
                if old == new:
                    continue
                if new is None:
                    await db.execute(f"DELETE FROM community_settings WHERE {_SCOPE} AND key=?",
                                     (*_parts(scope), key))
                else:
                    await db.execute(
                        "INSERT INTO community_settings (platform, workspace, channel, thread,"
                        " key, value, updated_at, updated_by) VALUES (?,?,?,?,?,?,?,?)"
                        " ON CONFLICT (platform, workspace, channel, thread, key) DO UPDATE"
                        " SET value=excluded.value, updated_at=excluded.updated_at,"
                        " updated_by=excluded.updated_by",
                        (*_parts(scope), key, new, now, actor))
                await db.execute(
                    "INSERT INTO settings_audit (platform, workspace, channel, thread, key, old,"
                    " new, actor, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (*_parts(scope), key, old, new, actor, now))
                changes.append(SettingChange(scope, key, old, new, actor, now))
        if changes:
            for listener in getattr(self, "_listeners", ()):
                listener(scope)
        return changes

    async def audit(self, scope: Scope | None = None, limit: int = 20) -> list[SettingChange]:
        if scope is None:
            rows = await (await self._db.execute(
                f"{_AUDIT} ORDER BY id DESC LIMIT ?", (limit,))).fetchall()
        else:
            rows = await (await self._db.execute(
                f"{_AUDIT} WHERE {_SCOPE} ORDER BY id DESC LIMIT ?",
                (*_parts(scope), limit))).fetchall()
        return [_change(row) for row in rows]

    async def actor_changes(self, actor: str,
                            platform: str | None = None) -> list[SettingChange]:
        if platform is None:
            rows = await (await self._db.execute(
                f"{_AUDIT} WHERE actor=? ORDER BY id", (actor,))).fetchall()
        else:
            rows = await (await self._db.execute(
                f"{_AUDIT} WHERE actor=? AND platform=? ORDER BY id",
                (actor, platform))).fetchall()
        return [_change(row) for row in rows]
