"""The chat service: one user message in, one streamed reply out, history kept in the store.

Per conversation, one turn at a time, in arrival order. Platform-free: the front door hands in
a ConversationKey, an IncomingMessage, a ReplySink and (in a thread) a loader of the thread's
earlier messages; this service owns the rest of the conversation policy.

Exactly once: a message is recorded (with its text) before the platform is told it arrived;
from there its delivery goes through the store's checked transitions (bot/core/delivery.py), and a
process that dies anywhere leaves a record that a redelivery or the start-up recovery
(`recover`) finishes: editing the placeholder already posted, showing a stored answer rather
than a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from bot.conversation import NO_CONTROLS, ConversationKey, IncomingMessage, ReplySink
from bot.core.answer_controls import AnswerControls, ModeratorCheck
from bot.core.answering import Answerer
from bot.core.attachments import NOTE_INTERRUPTED, AttachmentReader, prompt_room, shown_name
from bot.core.community import Community
from bot.core.context import PromptContexts
from bot.core.controls import ControlResult, Feedback
from bot.core.delivery import ChatConfig, CrashHook, DeliveryFlow, EarlierLoader, Outcome
from bot.core.edited import EditedQuestions
from bot.core.edits import PrivateData
from bot.core.history_window import HistoryWindow
from bot.core.notices import (
    EMPTY_ANSWER,
    INTERRUPTED_NOTICE,
    SHORTENED_NOTICE,
    STALE_NOTICE,
    UNEXPECTED_ERROR,
    USAGE_MESSAGE,
)
from bot.core.prompt import clean_text
from bot.core.running import RunningAnswers
from bot.core.scoped import ScopedSettings
from bot.core.seen import RecentKeys
from bot.core.sink_calls import offer, retire
from bot.core.summary import RollingSummaries, Summariser
from bot.core.summary_request import SummaryRequests
from bot.engine.generation import GenerationParams
from bot.engine.generator import Generator
from bot.engine.tokenizer import Tokenizer
from bot.errors import RinnaError
from bot.ports.locks import ConversationLocks, InProcessLocks
from bot.ports.records import Delivery
from bot.ports.replicas import Marker, Replicas
from bot.ports.store import ChatStore

# what the service's callers import from here (the flow and the notices live beside it)
__all__ = ["EMPTY_ANSWER", "INTERRUPTED_NOTICE", "SHORTENED_NOTICE", "STALE_NOTICE",
           "USAGE_MESSAGE", "ChatConfig", "ChatService", "CrashHook", "EarlierLoader", "Outcome",
           "Recovered"]

log = logging.getLogger(__name__)

# A sink for a recorded message, built by its platform's adapter (start-up recovery).
SinkFactory = Callable[[Delivery], ReplySink]


@dataclass(frozen=True, slots=True)
class Recovered:
    """What start-up recovery did for one platform."""

    answered: int = 0  # unfinished messages answered (or their stored answer shown)
    stale: int = 0  # too old: ended with a short notice instead
    failed: int = 0


class ChatService:
    def __init__(
        self,
        store: ChatStore,
        generator: Generator,
        tokenizer: Tokenizer,
        config: ChatConfig,
        clock: Callable[[], float] = time.monotonic,
        on_outcome: Callable[[str, Outcome], None] | None = None,  # (platform, outcome): metrics
        crash_hook: CrashHook | None = None,
        on_feedback: Callable[[str, str], None] | None = None,  # (platform, value): metrics
        locks: ConversationLocks | None = None,  # None: in-process (one process per database)
        summaries: RollingSummaries | None = None,  # None: SUMMARY=off
        summary_requests: SummaryRequests | None = None,  # None: SUMMARY_TOKENS' default
        community: Community | None = None,  # per-scope settings; None: the host's for all
        replicas: Replicas | None = None,  # None: this process alone on its database
    ) -> None:
        self.store = store
        self.generator = generator
        self.tokenizer = tokenizer
        self.config = config
        self._clock = clock
        self._on_outcome = on_outcome
        self._crash = crash_hook  # test-only fault injection at named points; None in service
        self._locks: ConversationLocks = locks if locks is not None else InProcessLocks()
        self.running = RunningAnswers()
        self.replicas = replicas if replicas is not None else Replicas()
        self.replicas.bus.on_stop(self.running.stop)  # a 「停止」 pressed on another process
        self._recent: dict[str, RecentKeys] = {}  # platform -> delivery keys taken up lately
        self._active: dict[asyncio.Task[object], asyncio.Future[Any] | None] = {}
        self._closing = False
        self._on_feedback = on_feedback
        self._edits = PrivateData(store)
        self.window = HistoryWindow(store, tokenizer, config.prompt_budget)
        self.summaries = summaries
        self.contexts = PromptContexts(store, self.window, summaries)
        self.summary_requests = summary_requests or SummaryRequests(Summariser(
            generator, tokenizer, config.context_tokens, GenerationParams(max_new_tokens=200)),
            self.window)
        self.scoped = ScopedSettings(community, config.params, config.prompt_budget)
        self.controls = AnswerControls(store, self.running, self._locks, self._redo,
                                       lambda: self._closing, on_feedback, self.replicas)
        self.reader = AttachmentReader(config.attachments,
                                       prompt_room(tokenizer, config.prompt_budget))
        self.edits = EditedQuestions(store, self.running, self._locks, self._edits, self._redo,
                                     window_s=config.edit_window_s)
        answerer = Answerer(store, generator, self.running, self.contexts, self.scoped,
                            self.summary_requests, stream_interval_s=config.stream_interval_s,
                            summarising=summaries is not None, point=self._point, clock=clock)
        # this process's token in the store's `take`: a new process takes over what an old
        # one left unfinished; a redelivery cannot take what this one is answering
        self.flow = DeliveryFlow(store, answerer, self.window, self._locks, self.running,
                                 uuid.uuid4().hex, self._active, lambda: self._closing,
                                 self._point, summaries, self.replicas.leases)

    def _point(self, name: str) -> None:
        if self._crash is not None:
            self._crash(name)

    @property
    def community(self) -> Community | None:
        """The per-scope settings (None: the host's everywhere): the admins' commands use it."""
        return self.scoped.community

    @property
    def closing(self) -> bool:
        return self._closing

    async def follows(self, key: ConversationKey) -> bool:
        """Whether the bot already takes part in this conversation."""
        return await self.store.find(key) is not None

    async def reset(self, key: ConversationKey, delivery_key: str | None = None, *,
                    sink: ReplySink | None = None, notice: str | None = None,
                    author: str | None = None,
                    accepted: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Start the conversation afresh. With a `delivery_key` (the platform message that asked
        for it), a redelivery of that message resets nothing: returns False.

        With a `sink` and a `notice` (the confirmation), the reset is exactly once like an
        answer: recorded together with the reset (one transaction), then the notice shown,
        then marked done; a redelivery or the start-up recovery of a reset whose confirmation
        was lost shows it (returns True) without resetting again. `accepted` is awaited once
        the request is recorded (the adapter acknowledges the platform there)."""
        if delivery_key is None:
            async with self._conversation(key):
                await self.store.reset(key)
            if sink is not None and notice is not None:
                await sink.finish(notice)
            return True
        shown = notice if sink is not None else None
        try:
            async with self._conversation(key):
                delivery = await self.store.accept_reset(key, delivery_key, shown, author)
            self._point("accepted")
        finally:
            if accepted is not None:
                await accepted()
        if delivery is None:
            return False
        if sink is None or shown is None:
            return delivery.fresh
        outcome = await self.flow.process(delivery, sink, recovering=not delivery.fresh)
        if outcome is Outcome.ANSWERED:  # the answer before the reset can no longer be redone
            previous = await self.store.previous_answer(delivery.conversation,
                                                        delivery.delivery_key)
            if previous is not None and previous.reply_ref is not None \
                    and await self.scoped.buttons(key):
                await retire(sink, previous.reply_ref)
        return outcome is Outcome.ANSWERED

    async def message_deleted(self, platform: str, delivery_key: str) -> bool:
        """A platform message was deleted: its stored text goes (see bot/core/edits.py)."""
        return await self._edits.message_deleted(platform, delivery_key)

    async def message_edited(self, platform: str, delivery_key: str, text: str) -> bool:
        """A platform message was edited: its stored text follows (see bot/core/edits.py)."""
        return await self._edits.message_edited(platform, delivery_key, text)

    def first_sight(self, platform: str, delivery_key: str) -> bool:
        """The cheap duplicate check, before an adapter parses an event: False (and counted as
        a duplicate) for a key taken up lately (a retry, Slack's app_mention + message double
        delivery, a replayed interaction). The store's record stays the authority."""
        if self._recent.setdefault(platform, RecentKeys()).add(delivery_key):
            return True
        if self._on_outcome is not None:
            self._on_outcome(platform, Outcome.DUPLICATE)
        return False

    async def handle(self, key: ConversationKey, message: IncomingMessage, sink: ReplySink,
                     *, earlier: EarlierLoader | None = None, addressed: bool = True,
                     accepted: Callable[[], Awaitable[None]] | None = None,
                     stream_interval_s: float | None = None, summary: bool = False) -> Outcome:
        """Answer `message` into `sink`, exactly once (see `_handle`). `summary`: the message
        asks for a summary (bot/core/summary_request.py); `earlier` then reads what to summarise."""
        outcome = await self._handle(key, message, sink, earlier=earlier, addressed=addressed,
                                     accepted=accepted, stream_interval_s=stream_interval_s,
                                     summary=summary)
        if self._on_outcome is not None:
            self._on_outcome(key.platform, outcome)
        return outcome

    async def _handle(self, key: ConversationKey, message: IncomingMessage, sink: ReplySink,
                      *, earlier: EarlierLoader | None = None, addressed: bool = True,
                      accepted: Callable[[], Awaitable[None]] | None = None,
                      stream_interval_s: float | None = None, summary: bool = False) -> Outcome:
        """Answer `message` into `sink`, exactly once.

        `earlier` loads the thread's earlier messages; they are imported (under the
        conversation's lock) when the bot has never taken part in the conversation.
        `addressed` False (a message that does not mention the bot) is answered only in a
        conversation the bot takes part in. `accepted` is awaited once the message is recorded
        (or found to need nothing): the adapter acknowledges the platform event there, so an
        acknowledged message is never lost. `stream_interval_s` overrides how often the sink
        gets the growing text (a terminal can take every token; platforms about once a second).
        """
        acknowledged = False
        leased: Marker | None = None  # its lease, held from its claim until the flow's end

        async def acknowledge() -> None:
            nonlocal acknowledged
            if accepted is not None and not acknowledged:
                acknowledged = True
                await accepted()

        try:
            text = clean_text(message.text).strip()
            if not addressed and (not (text or message.attachments)
                                  or not await self.follows(key)):
                return Outcome.IGNORED
            if summary:  # noted first: its record is then always read as a summary request
                await self.store.mark_summary_request(key.platform, message.delivery_key)
            if message.attachments:  # noted first: a restart says which were not read
                await self.store.note_unread_files(
                    key.platform, message.delivery_key,
                    [shown_name(a.name) for a in message.attachments])
            delivery = await self.store.accept(key, message.delivery_key, text,
                                                message.author or None,
                                                message.asker or None, message.sources)
            self._point("accepted")
            if delivery is not None and not self._closing:  # leased before the slow files
                if not await self.flow.claim(delivery):  # (no other replica takes it on)
                    return Outcome.DUPLICATE
                leased = (delivery.platform, delivery.delivery_key)
            await acknowledge()
            self._point("acknowledged")
            if delivery is None:
                log.info("%s: message %s already answered or being answered", key,
                         message.delivery_key)
                return Outcome.DUPLICATE
            if self._closing:
                log.info("%s: message %s arrived while stopping; answered after the restart",
                         key, message.delivery_key)
                return Outcome.DEFERRED
            notes = message.notes
            if message.attachments and delivery.turn_id is None:
                text, notes = await self._read_files(delivery, text, message)
            leased = None  # handed to the flow, which drops it
        except Exception as exc:  # ours (a clear notice) or unexpected (logged with its trace)
            known = isinstance(exc, RinnaError)
            log.log(logging.WARNING if known else logging.ERROR, "%s: could not take on message"
                    " %s: %s", key, message.delivery_key, type(exc).__name__, exc_info=exc)
            offer(sink, NO_CONTROLS)
            await sink.fail(exc.user_message if isinstance(exc, RinnaError) else UNEXPECTED_ERROR)
            return Outcome.FAILED
        finally:
            await acknowledge()
            if leased is not None:  # not handed to the flow
                await self.flow.leases.drop(leased, self.flow.runner)
        # Not recorded just now: an earlier handling died; carry on with what it posted.
        return await self.flow.process(delivery, sink, earlier=earlier,
                                       interval=stream_interval_s,
                                       recovering=not delivery.fresh, text=text, notes=notes,
                                       claimed=True)

    async def _read_files(self, delivery: Delivery, text: str,
                          message: IncomingMessage) -> tuple[str, tuple[str, ...]]:
        """Read the message's attached files into its recorded text (after the platform was
        told it arrived: downloads may take a while), and the notes on what was not read."""
        read = await self.reader.read(text, message.attachments, message.files)
        if read.text != text:
            await self.store.edit_delivered(delivery.platform, delivery.delivery_key, read.text)
        await self.store.files_read(delivery.platform, delivery.delivery_key)
        return read.text, (*message.notes, *read.notes)

    async def recover(self, platform: str, make_sink: SinkFactory, *,
                      max_age_s: float = 900.0) -> Recovered:
        """Finish every message of `platform` that was taken on but never answered (a crash,
        a kill, a shutdown that ran out of grace): those younger than `max_age_s` are answered
        into the placeholder already posted; older ones end with a short notice."""
        pending = await self.replicas.unclaimed(await self.store.unfinished(platform))
        if not pending:
            return Recovered()
        log.info("%s: recovering %d unanswered messages", platform, len(pending))
        now = time.time()
        old = [d for d in pending if now - d.received_at > max_age_s]
        young = [d for d in pending if now - d.received_at <= max_age_s]
        # a delivery a redelivery took first is a DUPLICATE here (the store's `take` decides)
        ended = await asyncio.gather(*(self.flow.give_up(d, make_sink(d)) for d in old))
        results = await asyncio.gather(*(self._recover_one(d, make_sink(d)) for d in young))
        report = Recovered(
            answered=sum(r in (Outcome.ANSWERED, Outcome.EMPTY) for r in results),
            stale=sum(r is Outcome.ANSWERED for r in ended),
            failed=sum(r is Outcome.FAILED for r in (*results, *ended)))
        log.info("%s: recovery done: %d answered, %d too old (notice), %d failed", platform,
                 report.answered, report.stale, report.failed)
        return report

    async def _recover_one(self, delivery: Delivery, sink: ReplySink) -> Outcome:
        await self.edits.mark_replaced(delivery, sink)  # an edit's: the old answer is struck
        return await self.flow.process(delivery, sink, recovering=True,
                                       notes=await self._unread_notes(delivery))

    async def _unread_notes(self, delivery: Delivery) -> tuple[str, ...]:
        """A message whose attached files were never read (the process died first): a note
        naming them, so the answer to its words does not drop them silently."""
        names = await self.store.unread_files(delivery.platform, delivery.delivery_key)
        if not names or delivery.turn_id is not None:
            return ()
        return (NOTE_INTERRUPTED.format(names="」「".join(names)),)

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking new work; let answers in flight finish for up to `grace_s`, then end
        the rest with a notice. Unfinished messages stay recorded for the next start."""
        self._closing = True
        running = set(self._active)
        if not running:
            return
        log.info("stopping: %d answers in flight, waiting up to %.0f s", len(running), grace_s)
        _, late = await asyncio.wait(running, timeout=grace_s)
        if not late:
            return
        log.warning("stopping: %d answers did not finish in time; they continue after the "
                    "restart", len(late))
        for task in late:
            work = self._active.get(task)
            if work is not None:
                work.cancel()
            else:
                task.cancel()
        await asyncio.wait(late, timeout=10.0)

    # ----- the buttons on an answer (bot/core/answer_controls.py) ---------------------------------
    async def answer_at(self, platform: str, reply_ref: str) -> Delivery | None:
        return await self.controls.answer_at(platform, reply_ref)

    async def stop(self, platform: str, reply_ref: str, user: str, *,
                   moderator: bool | ModeratorCheck = False) -> ControlResult:
        return await self.controls.stop(platform, reply_ref, user, moderator=moderator)

    async def regenerate(self, platform: str, reply_ref: str, request_key: str, user: str,
                         sink: ReplySink, *,
                         moderator: bool | ModeratorCheck = False) -> ControlResult:
        return await self.controls.regenerate(platform, reply_ref, request_key, user, sink,
                                              moderator=moderator)

    async def feedback(self, platform: str, reply_ref: str, user: str,
                       value: Feedback | str) -> ControlResult:
        return await self.controls.feedback(platform, reply_ref, user, value)

    async def _redo(self, request: Delivery, sink: ReplySink) -> None:
        """A regeneration taken on: answered like any message, its outcome counted."""
        outcome = await self.flow.process(request, sink, recovering=not request.fresh)
        if self._on_outcome is not None:
            self._on_outcome(request.platform, outcome)

    def _conversation(self, key: ConversationKey) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(key)
