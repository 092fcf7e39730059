"""The buttons on an answer: 「停止」, 「もう一度」, 👍/👎. Who may press what is decided here,
once for every platform: the person the answer is for (`Delivery.who_asked`), or a moderator
(the adapter says who is one)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.conversation import ReplySink
from bot.core.controls import ControlResult, Feedback
from bot.core.running import RunningAnswers
from bot.ports.locks import ConversationLocks
from bot.ports.records import Delivery
from bot.ports.replicas import Replicas
from bot.ports.store import ChatStore

log = logging.getLogger(__name__)

# Whether the presser is a moderator: asked only when they are not the person the answer is
# for (a platform lookup may cost a call). A bool where the platform knows at once.
ModeratorCheck = Callable[[], Awaitable[bool]]


async def may_press(user: str, answer: Delivery, moderator: bool | ModeratorCheck) -> bool:
    """The one rule for 停止 and もう一度: the person the answer is for, or a moderator."""
    if user == answer.who_asked:
        return True
    return moderator if isinstance(moderator, bool) else await moderator()


class AnswerControls:
    def __init__(self, store: ChatStore, running: RunningAnswers, locks: ConversationLocks,
                 redo: Callable[[Delivery, ReplySink], Awaitable[None]],
                 closing: Callable[[], bool],
                 on_feedback: Callable[[str, str], None] | None = None,
                 replicas: Replicas | None = None) -> None:
        self.store = store
        self._replicas = replicas if replicas is not None else Replicas()
        self.running = running
        self._locks = locks
        self._redo = redo  # answers a regeneration taken on (the chat service's pipeline)
        self._closing = closing
        self._on_feedback = on_feedback

    async def answer_at(self, platform: str, reply_ref: str) -> Delivery | None:
        """The recorded answer behind a message (its `key`, its asker: `who_asked`).
        `reply_ref` (here and below): the message's ref as its sink named it (unique within
        the platform: Slack's and Discord's are `channel/message`)."""
        return await self.store.answer_at(platform, reply_ref)

    async def stop(self, platform: str, reply_ref: str, user: str, *,
                   moderator: bool | ModeratorCheck = False) -> ControlResult:
        """「停止」: abort the answer streaming into the message `reply_ref` at once (its row
        leaves the engine's batch). The answering task keeps what was written, shows it with
        「（停止しました）」 and stores it as the turn. Only the person who asked, or a
        moderator (the adapter says), may stop it."""
        answer = await self.store.answer_at(platform, reply_ref) \
            or self.running.posted.get((platform, reply_ref))
        if answer is None:
            return ControlResult.NOT_FOUND
        if not await may_press(user, answer, moderator):
            return ControlResult.NOT_ALLOWED
        marker = (answer.platform, answer.delivery_key)
        result = self.running.stop(marker)
        if result is ControlResult.NOT_RUNNING and not self.running.answering(marker) \
                and marker in await self._replicas.leases.held([marker]):
            # another process writes it (its lease holds): the bus carries the press there
            await self._replicas.bus.publish_stop(marker)
            log.info("%s: stop of the answer to %s sent to the process writing it", answer.key,
                     answer.delivery_key)
            return ControlResult.DONE
        if result is not ControlResult.DONE:
            return result
        log.info("%s: answer to %s stopped by its button", answer.key, answer.delivery_key)
        return ControlResult.DONE

    async def regenerate(self, platform: str, reply_ref: str, request_key: str, user: str,
                         sink: ReplySink, *,
                         moderator: bool | ModeratorCheck = False) -> ControlResult:
        """「もう一度」: a new answer to the question answered in message `reply_ref`, into
        `sink` (a new reply in the same conversation), exactly once per `request_key` (the
        press). Only on the conversation's newest answer, by its asker or a moderator. The
        old answer stays stored, superseded (left out of prompts), its message retired.
        Returns when the new answer is shown; refusals return at once."""
        answer = await self.store.answer_at(platform, reply_ref)
        if answer is None or answer.turn_id is None:
            return ControlResult.NOT_FOUND
        if not await may_press(user, answer, moderator):
            return ControlResult.NOT_ALLOWED
        if self._closing():
            return ControlResult.CLOSING
        async with self._locks.hold(answer.key):
            request = await self.store.accept_regenerate(answer, request_key)
        if request is None:
            return ControlResult.NOT_LATEST
        await self._redo(request, sink)
        return ControlResult.DONE

    async def feedback(self, platform: str, reply_ref: str, user: str,
                       value: Feedback | str) -> ControlResult:
        """👍/👎 on the answer in message `reply_ref`: one vote per person, a second press
        changes it."""
        vote = Feedback(value)
        answer = await self.store.answer_at(platform, reply_ref)
        if answer is None or answer.turn_id is None:
            return ControlResult.NOT_FOUND
        previous = await self.store.set_feedback(answer, user, vote)
        if previous != vote and self._on_feedback is not None:
            self._on_feedback(platform, vote)
        return ControlResult.DONE
