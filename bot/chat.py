"""The chat service: one user message in, one streamed reply out, history kept in SQLite.

Per conversation, one turn at a time, in arrival order. Platform-free: adapters hand in a
ConversationKey, an IncomingMessage, a ReplySink and (in a thread) a loader of the thread's
earlier messages; this service owns the rest of the conversation policy.

Exactly once: a message is recorded (with its text) before the platform is told it arrived;
then, each step one transaction, its user turn is stored, its placeholder's handle kept, its
answer stored, and it is marked answered only after the final text is shown. A process that
dies anywhere leaves a record that a redelivery or the start-up recovery (`recover`) finishes:
editing the placeholder already posted, showing a stored answer rather than a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum

from bot.controls import STOPPED_MARK, ControlResult, Feedback
from bot.conversation import (ANSWERED, NO_CONTROLS, STREAMING, ConversationKey,
                              IncomingMessage, ReplySink)
from bot.errors import BusyError, MessageWithdrawn, OutdatedRequest, RinnaError
from bot.generation import GenerationParams
from bot.answer_controls import AnswerControls, ModeratorCheck
from bot.attachments import AttachmentLimits, AttachmentReader, prompt_room
from bot.edited import EditedQuestions
from bot.edits import PrivateData
from bot.generator import Generator
from bot.community import Community
from bot.scoped import ScopedSettings
from bot.history_window import HistoryWindow
from bot.context import PromptContext, PromptContexts
from bot.prompt import clean_text
from bot.notices import (EMPTY_ANSWER, INTERRUPTED_NOTICE, SHORTENED_NOTICE, STALE_NOTICE,
                         UNEXPECTED_ERROR, USAGE_MESSAGE, window_notice)
from bot.summary import RollingSummaries, Summariser
from bot.summary_request import SummaryRequests
from bot.ports.locks import ConversationLocks, InProcessLocks
from bot.ports.records import Delivery, DeliveryState, ImportedTurn
from bot.ports.sinks import LocatesConversation
from bot.ports.store import ChatStore
from bot.running import RunningAnswers
from bot.seen import RecentKeys
from bot.sink_calls import offer, placeholder_ref, resume, retire
from bot.tokenizer import Tokenizer

log = logging.getLogger(__name__)

def with_notes(text: str, notes: tuple[str, ...], *, first: bool = False) -> str:
    """An answer with the notes on what was not read (attachments), after it (or before)."""
    if not notes:
        return text
    joined = "\n".join(notes)
    return f"{joined}\n\n{text}" if first else f"{text}\n\n{joined}".strip()


def owner_of(delivery: Delivery) -> str | None:
    """Who asked, for the generator's per-user bound and turns: the platform and the asker's
    user id (None when the adapter names nobody: then only the queue bounds the request)."""
    return f"{delivery.platform}:{delivery.who_asked}" if delivery.who_asked else None


class Outcome(StrEnum):
    ANSWERED = "answered"
    DUPLICATE = "duplicate"  # a redelivered message: nothing done
    EMPTY = "empty"  # nothing to answer: usage hint sent
    FAILED = "failed"  # the user was told; the user turn is kept, no half answer stored
    IGNORED = "ignored"  # not addressed to the bot, in a conversation it does not take part in
    INTERRUPTED = "interrupted"  # stopped by a shutdown: the user was told; answered on restart
    DEFERRED = "deferred"  # arrived while shutting down: recorded, answered on restart


# The earlier messages of a thread the bot joins mid-way, oldest first, each with its delivery
# key (or None); read from the platform only when the service decides it needs them.
# (turn, delivery key) or (turn, delivery key, author's platform user id): see import_turns
EarlierLoader = Callable[[], Awaitable[Sequence[ImportedTurn]]]
# A sink for a recorded message, built by its platform's adapter (start-up recovery).
SinkFactory = Callable[[Delivery], ReplySink]
CrashHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ChatConfig:
    prompt_budget: int = 2048 - 128
    context_tokens: int = 2048  # the model's window (a summary's prompt and its length)
    stream_interval_s: float = 1.0
    params: GenerationParams | None = None  # None: the generator's defaults
    edit_window_s: float = 600.0  # an edited newest question this young is answered again
    attachments: AttachmentLimits = AttachmentLimits()  # how much of attached files is read


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
        self._recent: dict[str, RecentKeys] = {}  # platform -> delivery keys taken up lately
        self._active: dict[asyncio.Task[object], asyncio.Future[object] | None] = {}
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
                                       lambda: self._closing, on_feedback)
        self.reader = AttachmentReader(config.attachments,
                                       prompt_room(tokenizer, config.prompt_budget))
        self.edits = EditedQuestions(store, self.running, self._locks, self._edits, self._redo,
                                     window_s=config.edit_window_s)

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
        outcome = await self._process(delivery, sink, recovering=not delivery.fresh)
        if outcome is Outcome.ANSWERED:  # the answer before the reset can no longer be redone
            previous = await self.store.previous_answer(delivery.conversation,
                                                        delivery.delivery_key)
            if previous is not None and previous.reply_ref is not None \
                    and await self.scoped.buttons(key):
                await retire(sink, previous.reply_ref)
        return outcome is Outcome.ANSWERED

    async def import_history(
        self, key: ConversationKey, turns: Sequence[ImportedTurn]
    ) -> int:
        """Store a thread's earlier messages (oldest first) before the bot joins it; an
        item's third element, the author's platform user id, is stored (forget/export)."""
        async with self._conversation(key):
            return await self._import(key, turns)

    async def _import(self, key: ConversationKey, turns: Sequence[ImportedTurn]) -> int:
        """Cleaned, the bot's notices left out, only the newest that fit the prompt budget.
        Runs under the conversation's lock."""
        return await self.store.import_turns(key, self.window.backfill(turns))

    async def message_deleted(self, platform: str, delivery_key: str) -> bool:
        """A platform message was deleted: its stored text goes (see bot/edits.py)."""
        return await self._edits.message_deleted(platform, delivery_key)

    async def message_edited(self, platform: str, delivery_key: str, text: str) -> bool:
        """A platform message was edited: its stored text follows (see bot/edits.py)."""
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
        asks for a summary (bot/summary_request.py); `earlier` then reads what to summarise."""
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
            delivery = await self.store.accept(key, message.delivery_key, text,
                                                message.author or None,
                                                message.asker or None, message.sources)
            self._point("accepted")
            await acknowledge()
            self._point("acknowledged")
            if delivery is None or (key.platform, message.delivery_key) in self.running.inflight:
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
            if not text and delivery.turn_id is None:
                offer(sink, NO_CONTROLS)
                await sink.finish(with_notes(USAGE_MESSAGE, notes, first=True))
                await self.store.mark_answered(delivery)
                return Outcome.EMPTY
        except RinnaError as exc:
            log.warning("%s: could not take on message %s: %s", key, message.delivery_key,
                        type(exc).__name__, exc_info=exc)
            offer(sink, NO_CONTROLS)
            await sink.fail(exc.user_message)
            return Outcome.FAILED
        except Exception:
            log.exception("%s: unexpected failure while taking on a message", key)
            offer(sink, NO_CONTROLS)
            await sink.fail(UNEXPECTED_ERROR)
            return Outcome.FAILED
        finally:
            await acknowledge()
        # Not recorded just now: an earlier handling died; carry on with what it posted.
        return await self._process(delivery, sink, earlier=earlier, interval=stream_interval_s,
                                   recovering=not delivery.fresh, text=text, notes=notes)

    async def _read_files(self, delivery: Delivery, text: str,
                          message: IncomingMessage) -> tuple[str, tuple[str, ...]]:
        """Read the message's attached files into its recorded text (after the platform was
        told it arrived: downloads may take a while), and the notes on what was not read."""
        read = await self.reader.read(text, message.attachments, message.files)
        if read.text != text:
            await self.store.edit_delivered(delivery.platform, delivery.delivery_key, read.text)
        return read.text, (*message.notes, *read.notes)

    async def recover(self, platform: str, make_sink: SinkFactory, *,
                      max_age_s: float = 900.0) -> Recovered:
        """Finish every message of `platform` that was taken on but never answered (a crash,
        a kill, a shutdown that ran out of grace): those younger than `max_age_s` are answered
        into the placeholder already posted; older ones end with a short notice."""
        pending = await self.store.unfinished(platform)
        if not pending:
            return Recovered()
        log.info("%s: recovering %d unanswered messages", platform, len(pending))
        now = time.time()
        results: list[Outcome] = []
        stale = 0
        tasks = []
        for delivery in pending:
            if (delivery.platform, delivery.delivery_key) in self.running.inflight:
                continue  # a redelivery got there first
            sink = make_sink(delivery)
            if now - delivery.received_at > max_age_s:
                stale += 1
                tasks.append(asyncio.ensure_future(self._give_up(delivery, sink)))
            else:
                tasks.append(asyncio.ensure_future(self._process(delivery, sink, recovering=True)))
        results = await asyncio.gather(*tasks)
        report = Recovered(
            answered=sum(r in (Outcome.ANSWERED, Outcome.EMPTY) for r in results) - stale,
            stale=stale, failed=sum(r is Outcome.FAILED for r in results))
        log.info("%s: recovery done: %d answered, %d too old (notice), %d failed", platform,
                 report.answered, report.stale, report.failed)
        return report

    async def _give_up(self, delivery: Delivery, sink: ReplySink) -> Outcome:
        marker = (delivery.platform, delivery.delivery_key)
        if marker in self.running.inflight:
            return Outcome.DUPLICATE
        self.running.inflight.add(marker)
        try:
            current = await self.store.delivery(delivery.platform, delivery.delivery_key)
            if current is None or current.state is DeliveryState.ANSWERED:
                return Outcome.DUPLICATE
            await resume(sink, current.reply_ref)
            if current.final is not None:  # its answer (or reset) was done: show it, not a notice
                offer(sink, await self.scoped.controls(
                    current.key, ANSWERED if current.turn_id is not None else NO_CONTROLS))
                await sink.finish(current.final)
            else:
                offer(sink, NO_CONTROLS)
                await sink.fail(STALE_NOTICE)
            await self.store.mark_answered(delivery)
        except Exception:
            log.exception("%s: could not end message %s", delivery.key, delivery.delivery_key)
            return Outcome.FAILED
        finally:
            self.running.inflight.discard(marker)
        return Outcome.ANSWERED

    async def _process(self, delivery: Delivery, sink: ReplySink, *,
                       earlier: EarlierLoader | None = None, interval: float | None = None,
                       recovering: bool = False, text: str | None = None,
                       notes: tuple[str, ...] = ()) -> Outcome:
        """Answer a recorded message: its placeholder, user turn, answer, final text.
        `text` is the message's text when the platform just delivered it (else the record's);
        `notes` go at the end of the answer (what of its attachments was not read)."""
        key = delivery.key
        marker = (delivery.platform, delivery.delivery_key)
        if not self.running.begin(marker):
            return Outcome.DUPLICATE
        me = asyncio.current_task()
        if me is not None:
            self._active[me] = None
        try:
            # Another task may have finished it between its record being read and now.
            current = await self.store.delivery(delivery.platform, delivery.delivery_key)
            if current is None or current.state is DeliveryState.ANSWERED:
                return Outcome.DUPLICATE
            if current.withdrawn and current.turn_id is None:
                if recovering:
                    await resume(sink, current.reply_ref)
                raise MessageWithdrawn("deleted while it waited")
            delivery = current = await self._locate(current, sink)
            if recovering:
                await resume(sink, current.reply_ref)
            if current.final is not None:
                # Answered (or reset) before a crash: only showing it was left. Straight to
                # the final text, without the placeholder again.
                return await self._show_final(current, sink, current.final,
                                              answer=current.turn_id is not None)
            if current.turn_id is None and not (
                    current.text if text is None else text).strip():
                # An empty message (only a mention, say) recovered: the usage hint, as live.
                offer(sink, NO_CONTROLS)
                await sink.finish(USAGE_MESSAGE)
                await self.store.mark_answered(current)
                return Outcome.EMPTY
            # The placeholder goes out at once (its handle is kept as soon as it is known), but
            # the turn waits for the conversation's lock, taken here in arrival order.
            starting = asyncio.ensure_future(self._start(delivery, sink))
            work = asyncio.ensure_future(
                self._locked_turn(delivery, sink, starting, earlier, interval, notes))
            if me is not None:
                self._active[me] = work
            try:
                final = await work
            except asyncio.CancelledError:
                if work.cancelled() and self._closing and (me is None or not me.cancelling()):
                    log.info("%s: stopping; message %s will be answered after the restart",
                             key, delivery.delivery_key)
                    offer(sink, NO_CONTROLS)
                    await sink.fail(INTERRUPTED_NOTICE)
                    return Outcome.INTERRUPTED
                raise
            outcome = await self._show_final(delivery, sink, final, answer=True)
            if self.summaries is not None:  # what fell out of the window, in the background
                self.summaries.after_answer(delivery.conversation)
            if (older := self.running.to_retire.pop(marker, None)) is not None \
                    and await self.scoped.buttons(delivery.key):
                await retire(sink, older)
            return outcome
        except RinnaError as exc:
            if isinstance(exc, BusyError):
                log.warning("%s: busy, message %s not answered: %s", key,
                            delivery.delivery_key, type(exc).__name__)
            elif isinstance(exc, OutdatedRequest):
                log.info("%s: regeneration %s overtaken by a newer question", key,
                         delivery.delivery_key)
            elif isinstance(exc, MessageWithdrawn):
                log.info("%s: message %s was deleted while it waited; not answered", key,
                         delivery.delivery_key)
            else:
                log.warning("%s: answer failed: %s", key, type(exc).__name__, exc_info=exc)
            await self._fail(delivery, sink, exc.user_message)
            return Outcome.FAILED
        except Exception:
            log.exception("%s: unexpected failure while answering", key)
            await self._fail(delivery, sink, UNEXPECTED_ERROR)
            return Outcome.FAILED
        finally:
            self.running.end(marker)
            if me is not None:
                self._active.pop(me, None)

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
        moved = await self.store.move_delivery(delivery, key)
        self._point("located")
        return moved

    async def _show_final(self, delivery: Delivery, sink: ReplySink, final: str, *,
                          answer: bool) -> Outcome:
        offer(sink, await self.scoped.controls(delivery.key, ANSWERED if answer else NO_CONTROLS))
        await sink.finish(final)
        self._point("shown")
        await self.store.mark_answered(delivery)
        self._point("answered")
        return Outcome.ANSWERED

    async def _fail(self, delivery: Delivery, sink: ReplySink, message: str) -> None:
        offer(sink, NO_CONTROLS)
        await sink.fail(message)
        try:
            await self.store.mark_answered(delivery)  # ended with a clear notice: done
        except Exception:
            log.exception("%s: could not record message %s as answered", delivery.key,
                          delivery.delivery_key)

    async def _start(self, delivery: Delivery, sink: ReplySink) -> None:
        offer(sink, await self.scoped.controls(delivery.key, STREAMING))
        await sink.start()
        self._point("placeholder")
        ref = placeholder_ref(sink)
        if ref is not None and ref != delivery.reply_ref:
            self.running.posted[(delivery.platform, ref)] = delivery
            try:
                await self.store.set_reply_ref(delivery, ref)
            finally:
                self.running.posted.pop((delivery.platform, ref), None)
            self._point("reply_ref")

    async def _locked_turn(self, delivery: Delivery, sink: ReplySink,
                           starting: asyncio.Future[None], earlier: EarlierLoader | None,
                           interval: float | None, notes: tuple[str, ...] = ()) -> str:
        try:
            async with self._conversation(delivery.key):
                await starting
                return await self._turn(delivery, sink, earlier, interval, notes)
        finally:
            if not starting.done():
                starting.cancel()

    async def _turn(self, delivery: Delivery, sink: ReplySink, earlier: EarlierLoader | None,
                    interval: float | None, notes: tuple[str, ...] = ()) -> str:
        """Import the thread if the bot is new to it, store the user turn (once), generate and
        store the answer (or take the one stored before a crash). Runs under the lock.
        Returns the final text to show."""
        current = await self.store.delivery(delivery.platform, delivery.delivery_key)
        if current is not None and current.final is not None:
            return current.final  # answered before a crash; only showing it was left
        if await self._asks_summary(delivery):
            return await self._summary(delivery, current, earlier)
        if earlier is not None and (current is None or current.turn_id is None) \
                and not await self.store.has_turns(delivery.conversation):
            try:
                turns = await earlier()
            except Exception as exc:  # the platform could not be read: answer without it
                log.warning("%s: could not read the earlier messages (%s); answering without "
                            "them", delivery.key, type(exc).__name__)
            else:
                stored = await self._import(delivery.key, turns)
                log.info("%s: joined with %d earlier messages", delivery.key, stored)
        turn_id = await self.store.store_user_turn(delivery)
        self._point("user_turn")
        await self._note_retired(current, delivery)
        answer, context, stopped = await self._answer(
            delivery.conversation, turn_id, sink, interval, owner_of(delivery),
            (delivery.platform, delivery.delivery_key), delivery.key)
        final = answer or ("" if stopped else EMPTY_ANSWER)
        if context.fitted.shortened and answer:
            final = f"{final}\n\n{SHORTENED_NOTICE}"
        if context.unread and answer and await self.store.note_window_notice(
                delivery.conversation):
            final = f"{final}\n\n{window_notice(context.unread, self.summaries is not None)}"
        if stopped:
            final = f"{final}\n\n{STOPPED_MARK}".strip()
        final = with_notes(final, notes)
        await self.store.store_answer(delivery, answer, final)
        self._point("answer_stored")
        return final

    async def _asks_summary(self, delivery: Delivery) -> bool:
        """A summary request, or 「もう一度」 on the answer to one."""
        return any([await self.store.is_summary_request(delivery.platform, key)
                    for key in (delivery.delivery_key, delivery.replaces) if key])

    async def _summary(self, delivery: Delivery, current: Delivery | None,
                       source: EarlierLoader | None) -> str:
        """A summary asked for: written from what `source` reads (or the stored history),
        stored as the answer to the request's turn, like any answer. Runs under the lock."""
        read = None
        if source is not None:
            try:
                read = await source()
            except Exception as exc:  # the platform could not be read: the stored history
                log.warning("%s: could not read the messages to summarise (%s); summarising "
                            "the stored history", delivery.key, type(exc).__name__)
            else:
                if not await self.store.has_turns(delivery.conversation):
                    await self._import(delivery.key, read)  # joined, as by a first question
        turn_id = await self.store.store_user_turn(delivery)
        self._point("user_turn")
        await self._note_retired(current, delivery)  # as for an answer: buttons, overtaking
        material = await self.summary_requests.material(delivery, turn_id, read)
        parts: list[str] = []

        async def write() -> None:
            parts.append(await self.summary_requests.write(material, owner_of(delivery)))

        stopped = await self.running.generate((delivery.platform, delivery.delivery_key), write)
        answer = "".join(parts)
        final = f"{answer}\n\n{STOPPED_MARK}".strip() if stopped else answer
        await self.store.store_answer(delivery, answer, final)
        self._point("answer_stored")
        return final

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

    async def _note_retired(self, current: Delivery | None, delivery: Delivery) -> None:
        """Which earlier answer loses 「もう一度」 once this answer is shown (decided here,
        under the lock, so it is the one this answer follows): a new question's previous
        answer, or the answer a regeneration redoes. A regeneration whose answer is no longer
        the newest (a new question got there first) ends here, with a notice."""
        if current is None:
            return
        marker = (delivery.platform, delivery.delivery_key)
        if current.replaces is not None:
            replaced = await self.store.still_newest(current)
            if replaced is None:
                raise OutdatedRequest("a newer question came before the regeneration's turn")
            older = replaced
        elif current.turn_id is None:  # a new question
            older = await self.store.previous_answer(delivery.conversation,
                                                     delivery.delivery_key)
        else:
            return
        if older is not None and older.reply_ref is not None:
            self.running.to_retire[marker] = older.reply_ref

    async def _answer(self, conversation: int, upto: int, sink: ReplySink,
                      interval: float | None, owner: str | None,
                      marker: tuple[str, str], key: ConversationKey
                      ) -> tuple[str, PromptContext, bool]:
        """Generate the answer to turn `upto`, streaming it into `sink`. Returns the answer,
        what its prompt held (shortened? turns not read?), and whether its 「停止」 button
        stopped it (the generation is aborted at once; what was written so far is the answer)."""
        if interval is None:
            interval = self.config.stream_interval_s
        shape = await self.scoped.shape(key)  # the scope's persona, budget and sampling
        context = await self.contexts.read(conversation, upto, budget=shape.budget,
                                           head=shape.persona)
        fitted = context.fitted
        started = self._clock()
        parts: list[str] = []
        last_update = started
        shown_wait: tuple[int, float] | None = None  # (position, when) last shown

        async def on_wait(position: int) -> None:
            # Only a changed position, and at most one edit per interval per message: a
            # burst of N waiting requests would otherwise make O(N^2) platform edits.
            nonlocal shown_wait
            now = self._clock()
            if shown_wait is not None and (position == shown_wait[0]
                                           or now - shown_wait[1] < interval):
                return
            shown_wait = (position, now)
            await sink.waiting(position)

        async def consume() -> None:
            nonlocal last_update
            async for delta in self.generator.stream(fitted.prompt, shape.params,
                                                     owner=owner, on_wait=on_wait):
                parts.append(delta)
                now = self._clock()
                if now - last_update >= interval:
                    last_update = now
                    await sink.update(clean_text("".join(parts)).strip())
                    self._point("streaming")

        stopped = await self.running.generate(marker, consume)
        answer = clean_text("".join(parts)).strip()
        log.info("answered: %d prompt tokens (%d turns, %d not read%s), %d chars in %.2f s",
                 len(fitted.ids), len(fitted.turns), context.unread,
                 ", summary" if fitted.summarised else "", len(answer), self._clock() - started)
        log.debug("prompt=%r answer=%r", fitted.prompt, answer)
        return answer, context, stopped

    # ----- the buttons on an answer (bot/answer_controls.py) ---------------------------------
    async def answer_at(self, platform: str, reply_ref: str,
                        channel: str | None = None) -> Delivery | None:
        return await self.controls.answer_at(platform, reply_ref, channel)

    async def stop(self, platform: str, reply_ref: str, user: str, *,
                   moderator: bool | ModeratorCheck = False,
                   channel: str | None = None) -> ControlResult:
        return await self.controls.stop(platform, reply_ref, user, moderator=moderator,
                                        channel=channel)

    async def regenerate(self, platform: str, reply_ref: str, request_key: str, user: str,
                         sink: ReplySink, *, moderator: bool | ModeratorCheck = False,
                         channel: str | None = None) -> ControlResult:
        return await self.controls.regenerate(platform, reply_ref, request_key, user, sink,
                                              moderator=moderator, channel=channel)

    async def feedback(self, platform: str, reply_ref: str, user: str,
                       value: Feedback | str, *, channel: str | None = None) -> ControlResult:
        return await self.controls.feedback(platform, reply_ref, user, value, channel=channel)

    async def _redo(self, request: Delivery, sink: ReplySink) -> None:
        """A regeneration taken on: answered like any message, its outcome counted."""
        outcome = await self._process(request, sink, recovering=not request.fresh)
        if self._on_outcome is not None:
            self._on_outcome(request.platform, outcome)

    def _conversation(self, key: ConversationKey) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(key)
