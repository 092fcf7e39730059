"""An edited question gets a new answer.

When a person edits the newest question of a conversation while it is still the newest and
within EDIT_WINDOW_S of when it was sent, the bot answers it again: an answer still being
written to the old words is stopped first (and waited for), the old answer's message is marked
superseded the platform's way, and the new answer streams as a regeneration of that question
(bot/core/answer_controls.py's path: the old answer stays stored, left out of prompts).

Exactly once: the new answer is recorded under a key made of the message and the platform's
own id of that edit (Slack: the edit's ts; Discord: the edited timestamp), so a redelivered
edit event finds the record and does nothing new, and a restart's recovery finishes a
recorded one like any answer.

An edit that leaves the text as stored (a link unfurled, an attachment added by the platform)
changes nothing. An edit of any other message updates the stored history only (bot/core/edits.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from bot.core.attachments import HEADING
from bot.conversation import ReplySink
from bot.core.edits import PrivateData
from bot.ports.locks import ConversationLocks
from bot.ports.records import Delivery
from bot.ports.store import ChatStore
from bot.core.running import RunningAnswers
from bot.core.sink_calls import supersede

log = logging.getLogger(__name__)

SUPERSEDED_NOTICE = "（質問が編集されたため、この回答は古くなりました。新しい回答はこの下にあります）"
FILES_MARK = HEADING.split("{", 1)[0]  # how a turn's attached files begin

SinkFor = Callable[[Delivery], ReplySink]
Redo = Callable[[Delivery, ReplySink], Awaitable[None]]


class EditOutcome(StrEnum):
    UNCHANGED = "unchanged"  # the text is as stored: nothing to do
    HISTORY = "history"  # the stored text follows; no new answer (older, late, or waiting)
    ANSWERED_AGAIN = "answered_again"  # the question was answered again
    DUPLICATE = "duplicate"  # this edit was already answered (a redelivered event)


def edit_key(delivery_key: str, edit_id: str) -> str:
    """The record key of the new answer to one edit of message `delivery_key`."""
    return f"{delivery_key}#edit:{edit_id}"


def is_edit_key(delivery_key: str) -> bool:
    """Whether a record's key is an edit's new answer (edit_key's shape)."""
    return "#edit:" in delivery_key


def with_files(stored: str, question: str) -> str:
    """A stored turn with its question's words replaced and its attached files kept (an edit
    event carries the message's new words only; the files were read when it was sent)."""
    if stored.startswith(FILES_MARK):  # files only: no words of its own before
        return f"{question}\n\n{stored}" if question else stored
    start = stored.find("\n\n" + FILES_MARK)
    return question if start < 0 else question + stored[start:]


class EditedQuestions:
    def __init__(self, store: ChatStore, running: RunningAnswers, locks: ConversationLocks,
                 edits: PrivateData, redo: Redo, *, window_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.running = running
        self._locks = locks
        self._edits = edits
        self._redo = redo  # answers a regeneration taken on (the chat service's pipeline)
        self.window_s = window_s
        self._clock = clock

    async def edited(self, platform: str, delivery_key: str, text: str, *, edit_id: str,
                     sink_for: SinkFor, has_files: bool = False,
                     may_answer: bool = True) -> EditOutcome:
        """Message `delivery_key` now reads `text` (its words; `has_files`: it has attached
        files, kept as read). `edit_id` names this edit on the platform; `sink_for` makes the
        sink a new answer goes to (a new reply in the conversation). `may_answer`: False
        where the asker is refused or the bot is off there (the history still follows)."""
        before = await self.store.delivery(platform, delivery_key)
        if has_files and before is not None:
            stored = (before.text if before.turn_id is None
                      else await self._turn_text(before.conversation, before.turn_id))
            text = with_files(stored or "", text)
        changed = await self._edits.message_edited(platform, delivery_key, text)
        if not may_answer:
            return EditOutcome.HISTORY if changed else EditOutcome.UNCHANGED
        request = await self.store.delivery(platform, edit_key(delivery_key, edit_id))
        if request is not None:  # this edit was taken on before (a redelivery, a restart)
            if request.state.finished:
                return EditOutcome.DUPLICATE
            sink = sink_for(request)
            await self.mark_replaced(request, sink)
            await self._redo(request, sink)
            return EditOutcome.ANSWERED_AGAIN
        if not changed:
            return EditOutcome.UNCHANGED
        if not self._answerable(before):
            return EditOutcome.HISTORY
        assert before is not None and before.turn_id is not None
        answer = await self._latest(before.conversation, before.turn_id)
        if answer is None:
            return EditOutcome.HISTORY
        async with self._locks.hold(answer.key):
            request = await self.store.accept_regenerate(answer,
                                                         edit_key(delivery_key, edit_id))
        if request is None:  # no longer the newest (a newer question, an answer running)
            return EditOutcome.HISTORY
        sink = sink_for(request)
        await self._supersede(answer, sink)
        log.info("%s: message %s was edited; answering it again", answer.key, delivery_key)
        await self._redo(request, sink)
        return EditOutcome.ANSWERED_AGAIN

    async def mark_replaced(self, request: Delivery, sink: ReplySink) -> None:
        """An edit's new answer taken over (a redelivered edit, a restart's recovery): the
        answer it replaces is marked superseded as on the live path (marking twice, when the
        crash came after the mark, writes the same mark again)."""
        if request.replaces is None or not is_edit_key(request.delivery_key):
            return
        replaced = await self.store.delivery(request.platform, request.replaces)
        if replaced is not None:
            await self._supersede(replaced, sink)

    async def _supersede(self, answer: Delivery, sink: ReplySink) -> None:
        if answer.reply_ref is None:
            return
        old = answer.final or (await self._turn_text(answer.conversation, answer.answer_id)
                               if answer.answer_id is not None else None)
        await supersede(sink, answer.reply_ref, old or "", SUPERSEDED_NOTICE)

    async def _latest(self, conversation: int, turn_id: int) -> Delivery | None:
        """The question's latest answer (the original, or an earlier edit's or 「もう一度」's),
        once any still being written to the old words is stopped and has ended."""
        latest = await self.store.latest_answer(conversation, turn_id)
        if latest is None:
            return None
        marker = (latest.platform, latest.delivery_key)
        if self.running.answering(marker):  # here, in this process: the store's `take` gave it
            self.running.stop(marker)  # the old words' answer: stopped, then replaced
            await self.running.ended(marker)
        return await self.store.delivery(latest.platform, latest.delivery_key)

    def _answerable(self, before: Delivery | None) -> bool:
        """A question answered (or being answered) from its stored turn, sent within the
        window. A message still waiting has no turn yet: it is answered with the new text
        anyway."""
        return (before is not None and before.turn_id is not None and before.replaces is None
                and not before.withdrawn
                and self._clock() - before.received_at <= self.window_s)

    async def _turn_text(self, conversation: int, turn_id: int) -> str | None:
        for stored in await self.store.recent_turns(conversation, 1, turn_id + 1):
            if stored.id == turn_id:
                return stored.turn.text
        return None
