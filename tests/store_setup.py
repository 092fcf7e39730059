"""Setting a store up for a test in one write each, on either engine: a message taken on and
finished at once, a turn stored on its own. The service itself never does either (it takes
messages on through the delivery transitions and stores turns with them), so these live here,
over the store's own transaction and conversation lookup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.conversation import ConversationKey, Turn
from bot.errors import StorageError


@dataclass(frozen=True, slots=True)
class Claim:
    """A platform message taken on: its conversation, and its turn when it was read in with
    its thread before its own event came."""

    conversation: int
    stored_turn: int | None = None


async def take_on(store: Any, key: ConversationKey, delivery_key: str) -> Claim | None:
    """Take on a platform message whose handling is one write (as a reset was): recorded as
    answered at once. None if it was taken on before; one read in as thread history is taken
    on once, with its stored turn."""
    async with store._transaction() as db:
        conversation = await store._conversation_id(db, key)
        cursor = await db.execute(
            "INSERT INTO deliveries (platform, delivery_key, conversation_id,"
            " received_at, state) VALUES (?, ?, ?, ?, 'answered') ON CONFLICT DO NOTHING",
            (key.platform, delivery_key, conversation, store._clock()))
        if cursor.rowcount == 1:
            return Claim(conversation)
        row = await (await db.execute(
            "UPDATE deliveries SET state = 'answered' WHERE platform=?"
            " AND delivery_key=? AND state = 'imported' RETURNING conversation_id, turn_id",
            (key.platform, delivery_key))).fetchone()
        return None if row is None else Claim(int(row[0]), row[1])


async def add_turn(store: Any, conversation: int, turn: Turn,
                   delivery: tuple[str, str] | None = None, *, author: str | None = None) -> int:
    """Store one turn; `delivery` (platform, key) links the platform message to it; `author`
    is the writer's platform user id (user turns)."""
    async with store._transaction() as db:
        row = await (await db.execute(
            "INSERT INTO turns (conversation_id, speaker, text, created_at, author)"
            " VALUES (?,?,?,?,?) RETURNING id",
            (conversation, str(turn.speaker), turn.text, store._clock(),
             author or None))).fetchone()
        if row is None:
            raise StorageError("a stored turn vanished while it was recorded")
        turn_id = int(row[0])
        if delivery is not None:
            await db.execute(
                "UPDATE deliveries SET turn_id=? WHERE platform=? AND delivery_key=?",
                (turn_id, *delivery))
        return turn_id
