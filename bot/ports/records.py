"""The records a store keeps and hands back: deliveries, turns, a person's messages and votes.

Frozen values only; storage implementations build them, the core reads them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bot.conversation import ConversationKey, Turn


class DeliveryState(StrEnum):
    """Where a platform message is on its way to an answer. Each step from one state to the
    next is one store transition (bot/ports/store.py, DeliveryStore), one transaction that
    checks the state it comes from and says whether it won:

        imported --accept--> accepted --show_placeholder--> shown --begin_answer--> answering
        --store_answer--> ready --finish--> answered

    `accept_reset` records a reset as ready (its confirmation is the final text);
    `finish(failed=True)` ends any unfinished state with a notice (failed); a message deleted
    while it waits for its user turn is withdrawn (its text gone), then ends failed."""

    IMPORTED = "imported"  # read in with its thread; its own event, if it comes, is answered
    ACCEPTED = "accepted"  # taken on; its text is safe in the record
    SHOWN = "shown"  # its placeholder is posted (reply_ref), nothing stored in the history yet
    ANSWERING = "answering"  # its user turn is stored; the answer is being generated
    READY = "ready"  # the answer (or a reset's confirmation) is stored (final), not shown yet
    ANSWERED = "answered"  # the final text is shown: done
    FAILED = "failed"  # ended with a notice instead of an answer: done
    WITHDRAWN = "withdrawn"  # deleted (or forgotten) while it waited: ends with a notice

    @property
    def finished(self) -> bool:
        return self in (DeliveryState.ANSWERED, DeliveryState.FAILED)

    @property
    def unfinished(self) -> bool:
        """Taken on and not done: what `take` may claim and start-up recovery finishes."""
        return self in UNFINISHED


UNFINISHED = frozenset({DeliveryState.ACCEPTED, DeliveryState.SHOWN, DeliveryState.ANSWERING,
                        DeliveryState.READY, DeliveryState.WITHDRAWN})


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
    author: str | None = None  # the writer's platform user id
    text: str | None = None  # the message's text until its user turn is stored
    answer_id: int | None = None  # its answer turn, once stored (None: an empty answer)
    replaces: str | None = None  # a regeneration: the delivery key whose answer it redoes
    asker: str | None = None  # who asked the bot about this message, when not its writer
    withdrawn: bool = False  # its message was deleted (or forgotten) while it waited
    runner: str | None = None  # the process answering it now (`take`); None: nobody
    # recorded by this very `accept` (False: an earlier handling began it, then died)
    fresh: bool = field(default=False, compare=False)

    @property
    def who_asked(self) -> str | None:
        """The person the answer is for: may stop or redo it; their share of the generator."""
        return self.asker or self.author


@dataclass(frozen=True, slots=True)
class StoredTurn:
    id: int
    turn: Turn


@dataclass(frozen=True, slots=True)
class Summary:
    """A conversation's rolling summary: it stands for the turns with id <= `upto`."""

    text: str
    upto: int


def fingerprint(turns: Sequence[StoredTurn]) -> str:
    """What a summary was written from (ids, speakers, texts): a store saves the summary only
    if the turns it covers are still exactly these (none edited, deleted or forgotten since)."""
    digest = hashlib.sha256()
    for stored in turns:
        digest.update(f"{stored.id}\x1f{stored.turn.speaker}\x1f{stored.turn.text}\x1e"
                      .encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


# A thread's earlier message for import_turns: (turn, delivery key) or (turn, key, author id).
ImportedTurn = tuple[Turn, str | None] | tuple[Turn, str | None, str | None]


@dataclass(frozen=True, slots=True)
class AuthoredTurn:
    """One message of a person, with where and when (for `export --user`): a stored turn, or
    a message still waiting to be answered (`waiting`; no turn id yet)."""

    id: int | None
    platform: str
    workspace: str
    channel: str
    thread: str
    created_at: float  # seconds since the epoch
    text: str
    waiting: bool = False


@dataclass(frozen=True, slots=True)
class Vote:
    """One person's 👍/👎 on an answer (for `export --user`)."""

    platform: str
    delivery_key: str  # the message the answer answered
    value: str
    created_at: float
