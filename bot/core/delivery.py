"""One delivery's way from taken on to done: the chat service's exactly-once flow.

Each step is one transition of the store's DeliveryStore port (bot/ports/store.py), one
transaction that checks the state it comes from and says whether it won:

    take (claimed by this process) -> [relocate] -> show_placeholder -> begin_answer
    (earlier thread messages, user turn) -> store_answer -> finish (answered | failed)

What is written between begin_answer and store_answer (an answer, or a summary asked for) is
bot/core/answering.py's; which buttons an answer shows is its scope's (bot/core/scoped.py).

Exactly once rests on those answers: `take` lets one runner (this process's token) work on an
unfinished delivery, and every later transition names that runner and the state it expects.
A process that dies anywhere leaves a record that a redelivery or the start-up recovery takes
over (another runner): editing the placeholder already posted, showing a stored answer rather
than a new one. RunningAnswers only tracks, in this process, what a 「停止」 press can reach.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.conversation import ANSWERED, NO_CONTROLS, STREAMING, Controls, ReplySink
from bot.core.answering import Answerer, Written, log_refusal, with_notes
from bot.core.attachments import AttachmentLimits
from bot.core.history_window import HistoryWindow
from bot.core.notices import INTERRUPTED_NOTICE, STALE_NOTICE, UNEXPECTED_ERROR, USAGE_MESSAGE
from bot.core.running import RunningAnswers
from bot.core.scoped import ScopedSettings
from bot.core.sink_calls import offer, placeholder_ref, resume, retire
from bot.core.summary import RollingSummaries
from bot.engine.generation import GenerationParams
from bot.errors import MessageWithdrawn, OutdatedRequest, RinnaError
from bot.ports.locks import ConversationLocks
from bot.ports.records import Delivery, DeliveryState, ImportedTurn
from bot.ports.replicas import AnswerLeases, LocalLeases
from bot.ports.sinks import LocatesConversation
from bot.ports.store import ChatStore

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    ANSWERED = "answered"
    DUPLICATE = "duplicate"  # a redelivered message: nothing done
    EMPTY = "empty"  # nothing to answer: usage hint sent
    FAILED = "failed"  # the user was told; the user turn is kept, no half answer stored
    IGNORED = "ignored"  # not addressed to the bot, in a conversation it does not take part in
    INTERRUPTED = "interrupted"  # stopped by a shutdown: the user was told; answered on restart
    DEFERRED = "deferred"  # arrived while shutting down: recorded, answered on restart


ENDED = frozenset({Outcome.ANSWERED, Outcome.EMPTY, Outcome.FAILED})

# The earlier messages of a thread the bot joins mid-way, oldest first, each with its delivery
# key (or None); read from the platform only when the flow decides it needs them.
EarlierLoader = Callable[[], Awaitable[Sequence[ImportedTurn]]]
CrashHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ChatConfig:
    prompt_budget: int = 2048 - 128
    context_tokens: int = 2048  # the model's window (a summary's prompt and its length)
    stream_interval_s: float = 1.0
    params: GenerationParams | None = None  # None: the generator's defaults
    edit_window_s: float = 600.0  # an edited newest question this young is answered again
    attachments: AttachmentLimits = AttachmentLimits()  # how much of attached files is read


class Lost(Exception):
    """A transition lost: another runner finished or holds the delivery. Nothing to show."""


class DeliveryFlow:
    def __init__(self, store: ChatStore, answerer: Answerer, window: HistoryWindow,
                 locks: ConversationLocks, running: RunningAnswers, runner: str,
                 active: dict[asyncio.Task[object], asyncio.Future[Any] | None],
                 closing: Callable[[], bool], point: CrashHook,
                 summaries: RollingSummaries | None = None,
                 leases: AnswerLeases | None = None) -> None:
        self.store = store
        self.answerer = answerer
        self.scoped: ScopedSettings = answerer.scoped
        self.window = window
        self._locks = locks
        self.running = running
        self.runner = runner  # this process's token in the store's `take`
        self._active = active  # answering task -> its locked work (the service's shutdown)
        self._closing = closing
        self._point = point
        self.summaries = summaries  # None: SUMMARY=off
        # who writes an answer when several processes share the store (None: this one alone)
        self.leases: AnswerLeases = leases if leases is not None else LocalLeases()

    async def claim(self, delivery: Delivery) -> bool:
        """This runner's lease on `delivery`: False when another live process writes it (its
        lease holds) or this runner has it already. `process(claimed=True)` drops it."""
        if await self.leases.claim((delivery.platform, delivery.delivery_key), self.runner):
            return True
        log.info("%s: message %s is being answered by another process", delivery.key,
                 delivery.delivery_key)
        return False

    async def _take(self, delivery: Delivery, claimed: bool = False) -> Delivery | None:
        """The store's `take`, under a lease (`claimed`: this runner's already): None when
        another live process writes it, when it is finished, or this runner has it already."""
        marker = (delivery.platform, delivery.delivery_key)
        if not claimed and not await self.claim(delivery):
            return None
        taken = None
        try:
            taken = await self.store.take(delivery, self.runner)
            return taken
        finally:
            if taken is None:  # finished, this runner's already, or the store failed
                await self.leases.drop(marker, self.runner)

    async def _controls(self, delivery: Delivery, wanted: Controls) -> Controls:
        """`wanted`, or none where the delivery's scope hides the buttons."""
        return await self.scoped.controls(delivery.key, wanted)

    async def give_up(self, delivery: Delivery, sink: ReplySink) -> Outcome:
        """A recovered delivery too old to answer: its stored final text, or a short notice."""
        taken = await self._take(delivery)
        if taken is None:
            return Outcome.DUPLICATE
        try:
            return await self._give_up_taken(taken, sink)
        finally:
            await self.leases.drop((taken.platform, taken.delivery_key), self.runner)

    async def _give_up_taken(self, taken: Delivery, sink: ReplySink) -> Outcome:
        try:
            await resume(sink, taken.reply_ref)
            if taken.final is not None:  # its answer (or reset) was done: show it, not a notice
                offer(sink, await self._controls(
                    taken, ANSWERED if taken.turn_id is not None else NO_CONTROLS))
                await sink.finish(taken.final)
                await self.store.finish(taken)
            else:
                offer(sink, NO_CONTROLS)
                await sink.fail(STALE_NOTICE)
                await self.store.finish(taken, failed=True)
        except Exception:
            log.exception("%s: could not end message %s", taken.key, taken.delivery_key)
            await self._release(taken)
            return Outcome.FAILED
        return Outcome.ANSWERED

    async def process(self, delivery: Delivery, sink: ReplySink, *,
                      earlier: EarlierLoader | None = None, interval: float | None = None,
                      recovering: bool = False, text: str | None = None,
                      notes: tuple[str, ...] = (), claimed: bool = False) -> Outcome:
        """Answer a recorded message: its placeholder, user turn, answer, final text.
        `text` is the message's text when the platform just delivered it (else the record's);
        `notes` go at the end of the answer (what of its attachments was not read);
        `claimed`: this runner holds its lease already (`claim`); dropped here at the end."""
        taken = await self._take(delivery, claimed)
        if taken is None:
            log.info("%s: message %s already answered or being answered", delivery.key,
                     delivery.delivery_key)
            return Outcome.DUPLICATE
        marker = (taken.platform, taken.delivery_key)
        self.running.begin(marker)
        me = asyncio.current_task()
        if me is not None:
            self._active[me] = None
        outcome = Outcome.DUPLICATE
        try:
            outcome = await self._answer_taken(taken, sink, me, earlier, interval, recovering,
                                               text, notes)
            return outcome
        except Lost:
            log.info("%s: message %s was taken over; this runner stops", taken.key,
                     taken.delivery_key)
            return Outcome.DUPLICATE
        except RinnaError as exc:
            log_refusal(taken, exc)
            await self._fail(taken, sink, exc.user_message)
            outcome = Outcome.FAILED
            return outcome
        except Exception:
            log.exception("%s: unexpected failure while answering", taken.key)
            await self._fail(taken, sink, UNEXPECTED_ERROR)
            outcome = Outcome.FAILED
            return outcome
        finally:
            if me is not None:
                self._active.pop(me, None)
            try:
                if outcome not in ENDED:
                    await self._release(taken)
            finally:  # released first: who waits for its end (an edit) finds it free
                self.running.end(marker)
                await self.leases.drop(marker, self.runner)

    async def _answer_taken(self, taken: Delivery, sink: ReplySink,
                            me: asyncio.Task[object] | None, earlier: EarlierLoader | None,
                            interval: float | None, recovering: bool,
                            text: str | None, notes: tuple[str, ...]) -> Outcome:
        if taken.state is DeliveryState.WITHDRAWN:
            if recovering:
                await resume(sink, taken.reply_ref)
            raise MessageWithdrawn("deleted while it waited")
        current = await self._locate(taken, sink)
        if recovering:
            await resume(sink, current.reply_ref)
        if current.final is not None:
            # Answered (or reset) before a crash: only showing it was left. Straight to the
            # final text, without the placeholder again.
            return await self._show_final(current, sink, current.final,
                                          answer=current.turn_id is not None)
        if current.turn_id is None and not (
                (current.text or "") if text is None else text).strip():
            # An empty message (only a mention, say; or only files not read): the usage hint.
            offer(sink, NO_CONTROLS)
            await sink.finish(with_notes(USAGE_MESSAGE, notes, first=True))
            await self.store.finish(current)
            return Outcome.EMPTY
        # The placeholder goes out at once (its handle is kept as soon as it is known), but
        # the turn waits for the conversation's lock, taken here in arrival order.
        starting = asyncio.ensure_future(self._start(current, sink))
        work = asyncio.ensure_future(
            self._locked_turn(current, sink, starting, earlier, interval, notes))
        if me is not None:
            self._active[me] = work
        try:
            final = await work
        except asyncio.CancelledError:
            if work.cancelled() and self._closing() and (me is None or not me.cancelling()):
                log.info("%s: stopping; message %s will be answered after the restart",
                         current.key, current.delivery_key)
                offer(sink, NO_CONTROLS)
                await sink.fail(INTERRUPTED_NOTICE)
                return Outcome.INTERRUPTED
            raise
        outcome = await self._show_final(current, sink, final, answer=True)
        if self.summaries is not None:  # what fell out of the window, in the background
            self.summaries.after_answer(current.conversation)
        marker = (current.platform, current.delivery_key)
        if (older := self.running.to_retire.pop(marker, None)) is not None \
                and await self.scoped.buttons(current.key):
            await retire(sink, older)
        return outcome

    async def _release(self, delivery: Delivery) -> None:
        """Not finished here (a shutdown, a failure to record the end): the next runner (a
        redelivery, the next process) takes it over."""
        try:
            await self.store.release(delivery)
        except Exception:
            log.exception("%s: could not release message %s", delivery.key,
                          delivery.delivery_key)

    async def _locate(self, delivery: Delivery, sink: ReplySink) -> Delivery:
        """A message recorded before its conversation existed (a slash command: recorded
        first, then its question posted, which starts the thread): a sink that can `locate`
        posts the question (or finds it, after a crash) and names the conversation; the
        record moves there before anything is stored in it."""
        if not isinstance(sink, LocatesConversation):
            return delivery
        key = await sink.locate()
        if key is None or key == delivery.key:
            return delivery
        moved = await self.store.relocate(delivery, key)
        if moved is None:
            raise Lost()
        self._point("located")
        return moved

    async def _show_final(self, delivery: Delivery, sink: ReplySink, final: str, *,
                          answer: bool) -> Outcome:
        offer(sink, await self._controls(delivery, ANSWERED if answer else NO_CONTROLS))
        await sink.finish(final)
        self._point("shown")
        await self.store.finish(delivery)
        self._point("answered")
        return Outcome.ANSWERED

    async def _fail(self, delivery: Delivery, sink: ReplySink, message: str) -> None:
        offer(sink, NO_CONTROLS)
        await sink.fail(message)
        try:
            await self.store.finish(delivery, failed=True)  # ended with a clear notice: done
        except Exception:
            log.exception("%s: could not record message %s as failed", delivery.key,
                          delivery.delivery_key)
            await self._release(delivery)

    async def _start(self, delivery: Delivery, sink: ReplySink) -> None:
        offer(sink, await self._controls(delivery, STREAMING))
        await sink.start()
        self._point("placeholder")
        ref = placeholder_ref(sink)
        if ref is not None and ref != delivery.reply_ref:
            self.running.posted[(delivery.platform, ref)] = delivery
            try:
                await self.store.show_placeholder(delivery, ref)
            finally:
                self.running.posted.pop((delivery.platform, ref), None)
            self._point("reply_ref")

    async def _locked_turn(self, delivery: Delivery, sink: ReplySink,
                           starting: asyncio.Future[None], earlier: EarlierLoader | None,
                           interval: float | None, notes: tuple[str, ...]) -> str:
        try:
            async with self._locks.hold(delivery.key):
                await starting
                return await self._turn(delivery, sink, earlier, interval, notes)
        finally:
            if not starting.done():
                starting.cancel()

    async def _earlier(self, delivery: Delivery,
                       earlier: EarlierLoader | None) -> Sequence[ImportedTurn]:
        """The thread's earlier messages, trimmed to the budget, when the bot is new to it."""
        if earlier is None or delivery.turn_id is not None \
                or await self.store.has_turns(delivery.conversation):
            return ()
        try:
            turns = await earlier()
        except Exception as exc:  # the platform could not be read: answer without it
            log.warning("%s: could not read the earlier messages (%s); answering without "
                        "them", delivery.key, type(exc).__name__)
            return ()
        return self.window.backfill(turns)

    async def _read_all(self, delivery: Delivery,
                        source: EarlierLoader | None) -> Sequence[ImportedTurn] | None:
        """What a summary request summarises, as the platform shows it (None: it shows
        nothing here, or could not be read: the stored history is summarised)."""
        if source is None:
            return None
        try:
            return await source()
        except Exception as exc:  # the platform could not be read: the stored history
            log.warning("%s: could not read the messages to summarise (%s); summarising "
                        "the stored history", delivery.key, type(exc).__name__)
            return None

    async def _asks_summary(self, delivery: Delivery) -> bool:
        """A summary request, or 「もう一度」 on the answer to one."""
        return any([await self.store.is_summary_request(delivery.platform, key)
                    for key in (delivery.delivery_key, delivery.replaces) if key])

    async def _turn(self, delivery: Delivery, sink: ReplySink, earlier: EarlierLoader | None,
                    interval: float | None, notes: tuple[str, ...]) -> str:
        """Store the user turn (once; the thread's earlier messages first if the bot is new to
        it), write and store the answer (or the summary asked for). Runs under the lock.
        Returns the text to show."""
        summary = await self._asks_summary(delivery)
        read: Sequence[ImportedTurn] | None = None
        if summary:  # read whole; joined, as by a first question, where the bot is new
            read = await self._read_all(delivery, earlier)
            joined: Sequence[ImportedTurn] = ()
            if read is not None and delivery.turn_id is None \
                    and not await self.store.has_turns(delivery.conversation):
                joined = self.window.backfill(read)
        else:
            joined = await self._earlier(delivery, earlier)
        current = await self.store.begin_answer(delivery, joined)
        if current is None:
            raise Lost()
        self._point("user_turn")
        if joined:
            log.info("%s: joined with %d earlier messages", delivery.key, len(joined))
        await self._note_retired(delivery)  # as for any answer: buttons, overtaking
        written: Written = await (self.answerer.summary(current, read) if summary else
                                  self.answerer.answer(current, sink, interval, notes))
        if not await self.store.store_answer(current, written.answer, written.final):
            raise Lost()
        self._point("answer_stored")
        return written.final

    async def _note_retired(self, before: Delivery) -> None:
        """Which earlier answer loses 「もう一度」 once this answer is shown (decided here,
        under the lock, so it is the one this answer follows): a new question's previous
        answer, or the answer a regeneration redoes. A regeneration whose answer is no longer
        the newest (a new question got there first) ends here, with a notice. `before`: the
        record as it was before its user turn was stored."""
        marker = (before.platform, before.delivery_key)
        if before.replaces is not None:
            replaced = await self.store.still_newest(before)
            if replaced is None:
                raise OutdatedRequest("a newer question came before the regeneration's turn")
            older: Delivery | None = replaced
        elif before.turn_id is None:  # a new question
            older = await self.store.previous_answer(before.conversation, before.delivery_key)
        else:
            return
        if older is not None and older.reply_ref is not None:
            self.running.to_retire[marker] = older.reply_ref
