"""People's stored messages: platform deletions and edits, `forget --user`, `export --user`.

Platform-free: adapters translate "message deleted / edited" events into a (platform,
delivery key) and call `PrivateData`; the operator's commands run on DATABASE_PATH, also while
the bot runs (WAL and a busy timeout let both processes use the file). Deleted text is
overwritten in the database file and the WAL is emptied (storage/history.py).
"""

from __future__ import annotations

import json
import os
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from bot.errors import ConfigError, StorageError
from bot.prompt import clean_text
from storage.history import CHECKPOINT_TRIES, AuthoredTurn, HistoryStore, Vote

log = logging.getLogger(__name__)


class PrivateData:
    """What a platform's deletions and edits do to the stored history."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    async def message_deleted(self, platform: str, delivery_key: str) -> bool:
        """The platform message is gone: delete the turns stored from it (its own, and those
        of 「rinna に聞く」 about it), and drop it if it still waits to be answered. Returns
        whether any text was deleted."""
        deleted = await self.store.delete_delivered(platform, delivery_key)
        if deleted:
            log.info("%s: message %s was deleted; its stored turn is deleted", platform,
                     delivery_key)
        return bool(deleted)

    async def message_edited(self, platform: str, delivery_key: str, text: str) -> bool:
        """The platform message was edited: the stored turn takes its new text (cleaned as
        the chat service cleans what it stores). An edit to nothing readable changes nothing
        (Discord without the Message Content intent shows no text). Returns whether it changed."""
        cleaned = clean_text(text).strip()
        if not cleaned:
            return False
        changed = await self.store.edit_delivered(platform, delivery_key, cleaned)
        if changed:
            log.info("%s: message %s was edited; its stored turn is updated", platform,
                     delivery_key)
        return changed


def export_line(turn: AuthoredTurn) -> str:
    """One message as a JSON line (UTF-8 text as is); one still waiting to be answered has
    `"waiting": true` and no id yet."""
    line: dict[str, object] = {
        "platform": turn.platform, "workspace": turn.workspace, "channel": turn.channel,
        "thread": turn.thread, "id": turn.id,
        "created_at": datetime.fromtimestamp(turn.created_at, UTC).isoformat(
            timespec="seconds"),
        "text": turn.text,
    }
    if turn.waiting:
        line["waiting"] = True
    return json.dumps(line, ensure_ascii=False)


def vote_line(vote: Vote) -> str:
    """One 👍/👎 as a JSON line: the answer it rated is named by the message it answered."""
    return json.dumps({
        "platform": vote.platform, "answer_to": vote.delivery_key, "feedback": vote.value,
        "created_at": datetime.fromtimestamp(vote.created_at, UTC).isoformat(
            timespec="seconds"),
    }, ensure_ascii=False)


async def _open_existing(path: Path) -> HistoryStore:
    """The database `run` created; none there is a path to fix (ConfigError: exit 2, as a
    retry cannot help), never created here."""
    if str(path) != ":memory:" and not os.path.lexists(path):  # what is there: judged by open
        raise ConfigError(f"DATABASE_PATH={path}: no database there (nothing is stored); "
                          "set DATABASE_PATH to the bot's database file")
    return await HistoryStore.open(path)


async def export_user(path: Path, user: str, platform: str | None, out: TextIO) -> int:
    """`rinna-bot export --user ID`: that person's stored messages, those still waiting to be
    answered, then their 👍/👎 votes, as JSON lines on `out`. Returns how many messages."""
    store = await _open_existing(path)
    try:
        turns = [*await store.author_turns(user, platform),
                 *await store.author_waiting(user, platform)]
        votes = await store.author_votes(user, platform)
    finally:
        await store.close()
    for turn in turns:
        out.write(export_line(turn) + "\n")
    for vote in votes:
        out.write(vote_line(vote) + "\n")
    out.flush()
    return len(turns)


async def forget_user(path: Path, user: str, platform: str | None) -> int:
    """`rinna-bot forget --user ID`: delete every stored message of that person, their text
    overwritten in the database file and gone from the WAL. Returns how many."""
    store = await _open_existing(path)
    try:
        deleted = await store.forget_author(user, platform)
        if not await store.scrub(CHECKPOINT_TRIES):
            raise StorageError(
                f"DATABASE_PATH={path}: {deleted} messages deleted, but the WAL is still in "
                "use by another process; run the command again to remove their text from it")
    finally:
        await store.close()
    return deleted
