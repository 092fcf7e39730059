"""People's stored messages: platform deletions and edits, `forget --user`, `export --user`.

Platform deletions and edits reach the history through the chat service (bot/core/edits.py);
the operator's commands run on DATABASE_PATH, also while
the bot runs (WAL and a busy timeout let both processes use the file). Deleted text is
overwritten in the database file and the WAL is emptied (storage/history.py).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from pydantic import SecretStr

from bot.errors import ConfigError, StorageError
from bot.ports.community import SettingChange
from bot.ports.records import AuthoredTurn, Vote
from bot.ports.store import ChatStore
from storage import open_store

# `forget` waits for a WAL other readers keep busy this many busy timeouts (the running bot
# scrubs once)
FORGET_SCRUB_TRIES = 5



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


def change_line(change: SettingChange) -> str:
    """One settings change the person made as a community's admin, as a JSON line."""
    scope = change.scope
    return json.dumps({
        "platform": scope.platform, "workspace": scope.workspace, "channel": scope.channel,
        "thread": scope.thread, "setting": change.key, "old": change.old, "new": change.new,
        "created_at": datetime.fromtimestamp(change.created_at, UTC).isoformat(
            timespec="seconds"),
    }, ensure_ascii=False)


async def _open_existing(path: Path, url: SecretStr | None = None) -> ChatStore:
    """The database `run` created; none there is a path to fix (ConfigError: exit 2, as a
    retry cannot help), never created here. PostgreSQL (`url`: DATABASE_URL) when set."""
    if url is not None:
        return await open_store(path, url=url, pool_size=1)
    if str(path) != ":memory:" and not os.path.lexists(path):  # what is there: judged by open
        raise ConfigError(f"DATABASE_PATH={path}: no database there (nothing is stored); "
                          "set DATABASE_PATH to the bot's database file")
    return await open_store(path)


async def export_user(path: Path, user: str, platform: str | None, out: TextIO,
                      url: SecretStr | None = None) -> int:
    """`rinna-bot export --user ID`: that person's stored messages, those still waiting to be
    answered, their 👍/👎 votes, then the settings changes they made, as JSON lines on `out`.
    Returns how many messages."""
    store = await _open_existing(path, url)
    try:
        turns = [*await store.author_turns(user, platform),
                 *await store.author_waiting(user, platform)]
        votes = await store.author_votes(user, platform)
        changes = await store.actor_changes(user, platform)
    finally:
        await store.close()
    for turn in turns:
        out.write(export_line(turn) + "\n")
    for vote in votes:
        out.write(vote_line(vote) + "\n")
    for change in changes:
        out.write(change_line(change) + "\n")
    out.flush()
    return len(turns)


async def forget_user(path: Path, user: str, platform: str | None,
                      url: SecretStr | None = None) -> int:
    """`rinna-bot forget --user ID`: delete every stored message of that person, their text
    overwritten in the database file and gone from the WAL. Returns how many."""
    store = await _open_existing(path, url)
    try:
        deleted = await store.forget_author(user, platform)
        if not await store.scrub(FORGET_SCRUB_TRIES):
            raise StorageError(
                f"DATABASE_PATH={path}: {deleted} messages deleted, but the WAL is still in "
                "use by another process; run the command again to remove their text from it")
    finally:
        await store.close()
    return deleted
