"""The chat service: one user message in, one streamed reply out, history kept in SQLite.

Per conversation, one turn at a time, in arrival order. Platform-free: adapters hand in a
ConversationKey, an IncomingMessage and a ReplySink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from bot.conversation import ConversationKey, IncomingMessage, ReplySink, Speaker, Turn
from bot.errors import RinnaError
from bot.generation import GenerationParams
from bot.generator import Generator
from bot.prompt import clean_text, fit_prompt, turn_cost
from bot.reply import PLACEHOLDER, WAITING
from bot.tokenizer import Tokenizer
from storage.history import Claim, HistoryStore

log = logging.getLogger(__name__)

USAGE_MESSAGE = "質問を書いてください。例：「日本で一番高い山は？」"
SHORTENED_NOTICE = "（メッセージが長すぎたため、先頭の一部だけを読んで答えました）"
EMPTY_ANSWER = "うまく答えられませんでした。質問を言い換えて、もう一度お試しください。"
UNEXPECTED_ERROR = RinnaError.user_message
_PAGE = 64


def _error_messages(cls: type[RinnaError]) -> set[str]:
    return {cls.user_message}.union(*(_error_messages(sub) for sub in cls.__subclasses__()))


# Notices as earlier versions wrote them: they are still in old threads' history.
_OLD_NOTICES = ("質問を書いてください。例: 「日本で一番高い山は?」",
                "（うまく答えられませんでした。言い換えてもう一度お試しください）",
                "ボットを停止中のため回答できません。")
_OLD_WAITING = "順番待ち: "
_NOTICES = frozenset({PLACEHOLDER, USAGE_MESSAGE, EMPTY_ANSWER, *_error_messages(RinnaError),
                      *_OLD_NOTICES})


def as_history(turn: Turn) -> Turn | None:
    """A platform message as a history turn: text cleaned; the bot's notices (placeholder,
    usage hint, error messages, queue position) dropped, since they are not answers."""
    text = clean_text(turn.text).strip()
    if turn.speaker is Speaker.SYSTEM:
        if text in _NOTICES or text.startswith((WAITING.split("{", 1)[0], _OLD_WAITING)):
            return None
        text = text.removesuffix(SHORTENED_NOTICE).strip()
    return Turn(turn.speaker, text) if text else None


def owner_of(key: ConversationKey, message: IncomingMessage) -> str | None:
    """Who asked, for the generator's per-user bound and turns: the platform and the author
    (None when the adapter names no author: then the request is bounded only by the queue)."""
    return f"{key.platform}:{message.author}" if message.author else None


class Outcome(StrEnum):
    ANSWERED = "answered"
    DUPLICATE = "duplicate"  # a redelivered message: nothing done
    EMPTY = "empty"  # nothing to answer: usage hint sent
    FAILED = "failed"  # the user was told; the user turn is kept, no half answer stored


@dataclass(frozen=True, slots=True)
class ChatConfig:
    prompt_budget: int = 2048 - 128
    stream_interval_s: float = 1.0
    params: GenerationParams | None = None  # None: the generator's defaults


class ChatService:
    def __init__(
        self,
        store: HistoryStore,
        generator: Generator,
        tokenizer: Tokenizer,
        config: ChatConfig,
        clock: Callable[[], float] = time.monotonic,
        on_outcome: Callable[[str, Outcome], None] | None = None,  # (platform, outcome): metrics
    ) -> None:
        self.store = store
        self.generator = generator
        self.tokenizer = tokenizer
        self.config = config
        self._clock = clock
        self._on_outcome = on_outcome
        self._locks: dict[ConversationKey, tuple[asyncio.Lock, int]] = {}

    async def follows(self, key: ConversationKey) -> bool:
        """Whether the bot already takes part in this conversation."""
        return await self.store.find(key) is not None

    async def reset(self, key: ConversationKey, delivery_key: str | None = None) -> bool:
        """Start the conversation afresh. With a `delivery_key` (the platform message that asked
        for it), a redelivery of that message resets nothing: returns False."""
        if delivery_key is not None and await self.store.claim(key, delivery_key) is None:
            return False
        async with self._conversation(key):
            await self.store.reset(key)
        return True

    async def import_history(
        self, key: ConversationKey, turns: Sequence[tuple[Turn, str | None]]
    ) -> int:
        """Store a thread's earlier messages (oldest first) before the bot joins it: cleaned,
        the bot's notices left out, and only the newest that fit the prompt budget."""
        cleaned = [(kept, delivery) for turn, delivery in turns
                   if (kept := as_history(turn)) is not None]
        used, start = 0, len(cleaned)
        while start > 0:
            used += turn_cost(cleaned[start - 1][0], self.tokenizer, self.config.prompt_budget)
            if used > self.config.prompt_budget:
                break
            start -= 1
        async with self._conversation(key):
            return await self.store.import_turns(key, cleaned[start:])

    async def handle(self, key: ConversationKey, message: IncomingMessage, sink: ReplySink,
                     *, stream_interval_s: float | None = None) -> Outcome:
        outcome = await self._handle(key, message, sink, stream_interval_s=stream_interval_s)
        if self._on_outcome is not None:
            self._on_outcome(key.platform, outcome)
        return outcome

    async def _handle(self, key: ConversationKey, message: IncomingMessage, sink: ReplySink,
                      *, stream_interval_s: float | None = None) -> Outcome:
        """Answer `message` into `sink`. `stream_interval_s` overrides how often the sink gets
        the growing text (a terminal can take every token; chat platforms about once a second)."""
        claim = await self.store.claim(key, message.delivery_key)
        if claim is None:
            log.info("%s: message %s already seen; not answering again", key, message.delivery_key)
            return Outcome.DUPLICATE
        text = clean_text(message.text).strip()
        if not text:
            await sink.finish(USAGE_MESSAGE)
            return Outcome.EMPTY
        # The placeholder goes out at once, but the turn waits for the conversation's lock,
        # which is taken here, in arrival order, before anything else can be awaited.
        starting = asyncio.ensure_future(sink.start())
        try:
            async with self._conversation(key):
                await starting
                answer, shortened = await self._turn(key, claim, message, text, sink,
                                                     stream_interval_s, owner_of(key, message))
        except RinnaError as exc:
            log.warning("%s: answer failed: %s", key, type(exc).__name__, exc_info=exc)
            await sink.fail(exc.user_message)
            return Outcome.FAILED
        except Exception:
            log.exception("%s: unexpected failure while answering", key)
            await sink.fail(UNEXPECTED_ERROR)
            return Outcome.FAILED
        if not answer:
            await sink.finish(EMPTY_ANSWER)
        else:
            await sink.finish(f"{answer}\n\n{SHORTENED_NOTICE}" if shortened else answer)
        return Outcome.ANSWERED

    async def _turn(self, key: ConversationKey, claim: Claim, message: IncomingMessage,
                    text: str, sink: ReplySink, interval: float | None,
                    owner: str | None = None) -> tuple[str, bool]:
        """Store the user turn (unless it came in with the thread's history), generate, store
        the answer (unless empty). Runs under the conversation's lock."""
        if claim.stored_turn is None:
            await self.store.add_turn(claim.conversation, Turn(Speaker.USER, text),
                                      (key.platform, message.delivery_key), author=message.author)
        answer, shortened = await self._answer(claim.conversation, sink, interval, owner)
        if answer:
            await self.store.add_turn(claim.conversation, Turn(Speaker.SYSTEM, answer))
        return answer, shortened

    async def _answer(self, conversation: int, sink: ReplySink, interval: float | None,
                      owner: str | None = None) -> tuple[str, bool]:
        if interval is None:
            interval = self.config.stream_interval_s
        history = await self._history(conversation)
        fitted = fit_prompt(history, self.tokenizer, self.config.prompt_budget)
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

        async for delta in self.generator.stream(fitted.prompt, self.config.params,
                                                 owner=owner, on_wait=on_wait):
            parts.append(delta)
            now = self._clock()
            if now - last_update >= interval:
                last_update = now
                await sink.update(clean_text("".join(parts)).strip())
        answer = clean_text("".join(parts)).strip()
        log.info("answered: %d prompt tokens (%d turns, %d dropped), %d chars in %.2f s",
                 len(fitted.ids), len(fitted.turns), fitted.dropped, len(answer),
                 self._clock() - started)
        log.debug("prompt=%r answer=%r", fitted.prompt, answer)
        return answer, fitted.shortened

    async def _history(self, conversation: int) -> list[Turn]:
        """The newest turns whose formatted size reaches the prompt budget (oldest first)."""
        turns: list[Turn] = []
        used, before = 0, None
        while used <= self.config.prompt_budget:
            page = await self.store.recent_turns(conversation, _PAGE, before)
            for stored in page:
                turns.append(stored.turn)
                used += turn_cost(stored.turn, self.tokenizer, self.config.prompt_budget)
                if used > self.config.prompt_budget:
                    break
            if len(page) < _PAGE:
                break
            before = page[-1].id
        turns.reverse()
        return turns

    @asynccontextmanager
    async def _conversation(self, key: ConversationKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
