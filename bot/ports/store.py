"""The store, by role: what the core asks of a database. SQLite implements all of them today
(storage/history.py); a second database implements the same Protocols and passes the same
behavioural tests (tests/test_storage.py's `store` fixture lists the implementations).

Each write is one transaction in the implementation; exactly-once rests on the answers these
methods give (None / False when a redelivery or a rival got there first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bot.conversation import ConversationKey
from bot.ports.community import CommunityStore
from bot.ports.records import AuthoredTurn, Delivery, ImportedTurn, StoredTurn, Summary, Vote


class DeliveryStore(Protocol):
    """Platform messages taken on for answering, and their way to done: each transition of
    DeliveryState (bot/ports/records.py) is one method and one transaction that checks the
    state it comes from (and the runner that took the delivery) and says whether it won
    (a Delivery or True; None or False: it lost, and nothing changed)."""

    async def accept(self, key: ConversationKey, delivery_key: str, text: str,
                     author: str | None = None, asker: str | None = None,
                     sources: Sequence[str] = ()) -> Delivery | None: ...

    async def accept_reset(self, key: ConversationKey, delivery_key: str, notice: str | None,
                           author: str | None = None) -> Delivery | None: ...

    async def accept_regenerate(self, answer: Delivery,
                                request_key: str) -> Delivery | None: ...

    async def take(self, delivery: Delivery, runner: str) -> Delivery | None: ...

    async def release(self, delivery: Delivery) -> bool: ...

    async def relocate(self, delivery: Delivery, key: ConversationKey) -> Delivery | None: ...

    async def show_placeholder(self, delivery: Delivery, ref: str) -> bool: ...

    async def begin_answer(self, delivery: Delivery,
                           earlier: Sequence[ImportedTurn] = ()) -> Delivery | None: ...

    async def store_answer(self, delivery: Delivery, answer: str, final: str) -> bool: ...

    async def finish(self, delivery: Delivery, *, failed: bool = False) -> bool: ...

    async def delivery(self, platform: str, delivery_key: str) -> Delivery | None: ...

    async def unfinished(self, platform: str) -> list[Delivery]: ...

    async def answer_at(self, platform: str, reply_ref: str) -> Delivery | None: ...

    async def previous_answer(self, conversation: int,
                              delivery_key: str) -> Delivery | None: ...

    async def still_newest(self, request: Delivery) -> Delivery | None: ...

    async def latest_answer(self, conversation: int, turn_id: int) -> Delivery | None: ...


class TurnStore(Protocol):
    """Conversations and their history."""

    async def find(self, key: ConversationKey) -> int | None: ...

    async def reset(self, key: ConversationKey) -> None: ...

    async def has_turns(self, conversation: int) -> bool: ...

    async def import_turns(self, key: ConversationKey, turns: Sequence[ImportedTurn]) -> int: ...

    async def recent_turns(self, conversation: int, limit: int,
                           before: int | None = None) -> list[StoredTurn]: ...


class SummaryStore(Protocol):
    """A conversation's rolling summary and its window notice (bot/summary.py)."""

    async def summary(self, conversation: int) -> Summary | None: ...

    async def save_summary(self, conversation: int, text: str, upto: int,
                           previous: int | None, covered: str) -> bool: ...

    async def drop_summary(self, conversation: int) -> None: ...

    async def count_turns(self, conversation: int, after: int | None, before: int) -> int: ...

    async def note_window_notice(self, conversation: int) -> bool: ...

    async def mark_summary_request(self, platform: str, delivery_key: str) -> None: ...

    async def is_summary_request(self, platform: str, delivery_key: str) -> bool: ...


class FeedbackStore(Protocol):
    """👍/👎 on answers, and the counts the status shows."""

    async def set_feedback(self, answer: Delivery, user: str, value: str) -> str | None: ...

    async def feedback_counts(self, platform: str | None = None,
                              delivery_key: str | None = None) -> dict[str, int]: ...

    async def answers_since(self, since: float) -> int: ...


class PrivacyStore(Protocol):
    """People's text wherever it is kept: deletions, edits, `forget`, `export`, retention."""

    async def delete_delivered(self, platform: str, delivery_key: str) -> int: ...

    async def edit_delivered(self, platform: str, delivery_key: str, text: str) -> bool: ...

    async def author_turns(self, author: str,
                           platform: str | None = None) -> list[AuthoredTurn]: ...

    async def author_waiting(self, author: str,
                             platform: str | None = None) -> list[AuthoredTurn]: ...

    async def author_votes(self, author: str, platform: str | None = None) -> list[Vote]: ...

    async def forget_author(self, author: str, platform: str | None = None) -> int: ...

    async def delete_older_than(self, cutoff: float) -> int: ...

    async def scrub(self, tries: int = 1) -> bool: ...

    async def close(self) -> None: ...


class ChatStore(DeliveryStore, TurnStore, FeedbackStore, PrivacyStore, SummaryStore,
                CommunityStore, Protocol):
    """Everything the chat service asks of the store."""
