"""Writing one answer, once its user turn is stored: what bot/core/delivery.py's flow asks for under
the conversation's lock, between `begin_answer` and `store_answer`.

An answer: the prompt's context (the scope's persona, the rolling summary, the newest turns
that fit; bot/core/context.py), generated with the scope's sampling and streamed into the sink where
「停止」 can reach it (bot/core/running.py), then its final text: the answer and its notices (the
prompt was shortened, earlier messages were not read, it was stopped, attached files not read).
A summary asked for (bot/core/summary_request.py): written from what the platform showed or the
stored history, stoppable the same way. Neither touches a delivery's state: the flow does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.conversation import ReplySink
from bot.core.context import PromptContext, PromptContexts
from bot.core.controls import STOPPED_MARK
from bot.core.notices import EMPTY_ANSWER, SHORTENED_NOTICE, window_notice
from bot.core.prompt import clean_text
from bot.core.running import Marker, RunningAnswers
from bot.core.scoped import ScopedSettings
from bot.core.summary_request import SummaryRequests
from bot.engine.generator import Generator
from bot.errors import BusyError, MessageWithdrawn, OutdatedRequest, RinnaError
from bot.ports.records import Delivery, ImportedTurn
from bot.ports.store import SummaryStore

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


@dataclass(frozen=True, slots=True)
class Written:
    answer: str  # what the history keeps as the bot's turn ("" : none)
    final: str  # what the person is shown


class Answerer:
    def __init__(self, store: SummaryStore, generator: Generator, running: RunningAnswers,
                 contexts: PromptContexts, scoped: ScopedSettings,
                 summary_requests: SummaryRequests, *, stream_interval_s: float,
                 summarising: bool, point: Callable[[str], None] = lambda name: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.generator = generator
        self.running = running
        self.contexts = contexts
        self.scoped = scoped
        self.summary_requests = summary_requests
        self.stream_interval_s = stream_interval_s
        self._summarising = summarising  # rolling summaries on: the window notice says so
        self._point = point  # the service's crash hook (tests' fault injection)
        self._clock = clock

    async def answer(self, delivery: Delivery, sink: ReplySink, interval: float | None,
                     notes: tuple[str, ...] = ()) -> Written:
        """The answer to `delivery`'s stored user turn, streamed into `sink`, and its final
        text (`notes`: what of its attachments was not read, at the end)."""
        assert delivery.turn_id is not None
        answer, context, stopped = await self._generate(delivery, delivery.turn_id, sink,
                                                        interval)
        final = answer or ("" if stopped else EMPTY_ANSWER)
        if context.fitted.shortened and answer:
            final = f"{final}\n\n{SHORTENED_NOTICE}"
        if context.unread and answer and await self.store.note_window_notice(
                delivery.conversation):
            final = f"{final}\n\n{window_notice(context.unread, self._summarising)}"
        if stopped:
            final = f"{final}\n\n{STOPPED_MARK}".strip()
        return Written(answer, with_notes(final, notes))

    async def summary(self, delivery: Delivery,
                      read: Sequence[ImportedTurn] | None) -> Written:
        """A summary asked for by `delivery` (its request turn stored): of `read` (what the
        platform showed), else of the stored history before the request."""
        assert delivery.turn_id is not None
        material = await self.summary_requests.material(delivery, delivery.turn_id, read)
        parts: list[str] = []

        async def write() -> None:
            parts.append(await self.summary_requests.write(material, owner_of(delivery)))

        stopped = await self.running.generate(_marker(delivery), write)
        answer = "".join(parts)
        return Written(answer, f"{answer}\n\n{STOPPED_MARK}".strip() if stopped else answer)

    async def _generate(self, delivery: Delivery, upto: int, sink: ReplySink,
                        interval: float | None) -> tuple[str, PromptContext, bool]:
        """Generate the answer to turn `upto`, streaming it into `sink`. Returns the answer,
        what its prompt held (shortened? turns not read?), and whether its 「停止」 button
        stopped it (the generation is aborted at once; what was written so far is the answer)."""
        if interval is None:
            interval = self.stream_interval_s
        shape = await self.scoped.shape(delivery.key)  # the scope's persona, budget, sampling
        context = await self.contexts.read(delivery.conversation, upto, budget=shape.budget,
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
                                                     owner=owner_of(delivery),
                                                     on_wait=on_wait):
                parts.append(delta)
                now = self._clock()
                if now - last_update >= interval:
                    last_update = now
                    await sink.update(clean_text("".join(parts)).strip())
                    self._point("streaming")

        stopped = await self.running.generate(_marker(delivery), consume)
        answer = clean_text("".join(parts)).strip()
        log.info("answered: %d prompt tokens (%d turns, %d not read%s), %d chars in %.2f s",
                 len(fitted.ids), len(fitted.turns), context.unread,
                 ", summary" if fitted.summarised else "", len(answer), self._clock() - started)
        log.debug("prompt=%r answer=%r", fitted.prompt, answer)
        return answer, context, stopped


def _marker(delivery: Delivery) -> Marker:
    return (delivery.platform, delivery.delivery_key)


def log_refusal(delivery: Delivery, exc: RinnaError) -> None:
    """Why a delivery got a notice instead of an answer, in the log (no text of the user's)."""
    key, message = delivery.key, delivery.delivery_key
    if isinstance(exc, BusyError):
        log.warning("%s: busy, message %s not answered: %s", key, message,
                    type(exc).__name__)
    elif isinstance(exc, OutdatedRequest):
        log.info("%s: regeneration %s overtaken by a newer question", key, message)
    elif isinstance(exc, MessageWithdrawn):
        log.info("%s: message %s was deleted while it waited; not answered", key, message)
    else:
        log.warning("%s: answer failed: %s", key, type(exc).__name__, exc_info=exc)
