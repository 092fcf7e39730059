"""Summaries written by the model itself: a conversation's rolling summary of the turns that fell
out of the window, and a thread summarised on request.

The model is asked in its own instruction format (one ユーザー turn: an instruction and the
conversation as a transcript; the answer is the summary). A transcript too long for the window
is cut into chunks that fit, summarised in order, each call given the summary so far: the
number of model calls is the number of chunks, and at most `max_calls` (older messages beyond
that are left out, and the caller is told how many were read).

The rolling summary runs in the generator's background class (bot/engine/scheduler.py): after an
answer is sent, never before a person's request, aborted and redone when one arrives. It is
stored with the conversation (storage/summaries.py) and put at the head of the prompt as an
exchange (`exchange`); turns it covers are not read again. A summary whose turns were edited,
deleted or forgotten is deleted by the store and written again after the next answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.conversation import Speaker, Turn
from bot.errors import PromptRefused, RinnaError
from bot.engine.generation import GenerationParams
from bot.engine.generator import Generator
from bot.core.history_window import HistoryWindow
from bot.ports.records import StoredTurn, Summary, fingerprint
from bot.ports.store import SummaryStore
from bot.core.prompt import REPLY_CUE, boundary_labels, build_prompt, clean_text, turn_cost
from bot.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

# The exchange that carries a summary at the head of a prompt.
SUMMARY_QUESTION = "ここまでの会話を短くまとめてください。"
INSTRUCTION = "次の会話を日本語で短く要約してください。"
INSTRUCTION_AFTER = ("次の「これまでの要約」と、その後の会話を合わせて、"
                     "日本語で短く要約してください。")
PREVIOUS_HEADING = "これまでの要約："
CONVERSATION_HEADING = "会話："
# The transcript's speakers: not the prompt's own labels, so no line of it can start a turn.
LABELS = {Speaker.USER: "利用者", Speaker.SYSTEM: "rinna"}
MAX_CALLS = 16  # model calls for one summary at most (a chunk each)
MESSAGE_TOKENS = 256  # one message's share of a chunk at most (a longer one is cut)
CUT_MARK = "…"
_EXPECTED = [str(Speaker.USER), str(Speaker.SYSTEM)]  # a summary prompt's only boundaries


def exchange(summary: Summary) -> tuple[Turn, Turn]:
    """The summary as the opening exchange of a prompt."""
    return Turn(Speaker.USER, SUMMARY_QUESTION), Turn(Speaker.SYSTEM, summary.text)


def transcript_line(turn: Turn, tokenizer: Tokenizer) -> str:
    text = " ".join(clean_text(turn.text).split())
    if turn_cost(Turn(turn.speaker, text), tokenizer, MESSAGE_TOKENS) > MESSAGE_TOKENS:
        ids = tokenizer.encode(text)[:MESSAGE_TOKENS]
        text = tokenizer.text_of(ids) + CUT_MARK
    return f"{LABELS[turn.speaker]}: {text}"


@dataclass(frozen=True, slots=True)
class Written:
    """A summary and how much of what it was asked to cover it read."""

    text: str
    read: int  # messages read (the newest ones)
    calls: int  # model calls made


class Summariser:
    """Writes summaries with the shared generator: `params.max_new_tokens` is the summary's
    length; every prompt fits `context_tokens` with it."""

    def __init__(self, generator: Generator, tokenizer: Tokenizer, context_tokens: int,
                 params: GenerationParams, *, max_calls: int = MAX_CALLS) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.params = params
        self.max_calls = max_calls
        self.budget = context_tokens - params.max_new_tokens  # tokens a prompt may take

    def chunks(self, turns: Sequence[Turn], previous: str | None) -> list[list[str]]:
        """The transcript's lines cut into chunks that each fit one prompt beside the
        instruction and a summary so far (the newest chunks when there are too many)."""
        # Every chunk's prompt carries the instruction and a summary so far: the one given,
        # or one the model wrote (at most max_new_tokens long).
        carried = max(self._cost(previous) if previous else 0, self.params.max_new_tokens)
        room = self.budget - self._cost(self._prompt([], "-")) - carried - 2
        lines = [transcript_line(t, self.tokenizer) for t in turns]
        chunks: list[list[str]] = []
        used = room + 1
        for line in reversed(lines):  # newest first, so a cap keeps the newest
            cost = self._cost(line) + 1
            if used + cost > room:
                if len(chunks) == self.max_calls:
                    break
                chunks.append([])
                used = 0
            chunks[-1].insert(0, line)
            used += cost
        chunks.reverse()
        return chunks

    async def write(self, turns: Sequence[Turn], previous: str | None = None, *,
                    background: bool = True, owner: str | None = None) -> Written | None:
        """A summary of `previous` (a summary of what came before) and `turns`; None if the
        model wrote nothing."""
        # Tokenizing every message (0.12 s for 1,000) runs off the event loop.
        chunks = await asyncio.to_thread(self.chunks, turns, previous)
        summary = previous
        for chunk in chunks:
            text = await self._call(self._prompt(chunk, summary), background, owner)
            if text:
                summary = text
        if not summary or summary == previous:
            return None
        return Written(summary, sum(len(c) for c in chunks), len(chunks))

    def _prompt(self, lines: Sequence[str], previous: str | None) -> str:
        """One ユーザー turn, escaped strictly (as bot/core/prompt.py escapes a conversation) and
        checked at the token level: a line that still reads as a turn boundary to the model
        (a message forging one) is left out; a prompt that still forges is refused."""
        prompt = self._checked(lines, previous)
        if prompt is None:
            prompt = self._checked([ln for ln in lines if not self._forges(ln)], previous)
        if prompt is None:
            raise PromptRefused("a summary prompt forges a turn boundary at the token level")
        return prompt

    def _checked(self, lines: Sequence[str], previous: str | None) -> str | None:
        prompt = build_prompt([self._question(lines, previous)], normalizer=self.tokenizer,
                              strict=True)
        ids = self.tokenizer.encode(prompt)
        return prompt if boundary_labels(ids, self.tokenizer) == _EXPECTED else None

    def _forges(self, line: str) -> bool:
        return self._checked([line], None) is None

    @staticmethod
    def _question(lines: Sequence[str], previous: str | None) -> Turn:
        if previous:
            question = "\n".join([INSTRUCTION_AFTER, PREVIOUS_HEADING, previous,
                                  CONVERSATION_HEADING, *lines])
        else:
            question = "\n".join([INSTRUCTION, CONVERSATION_HEADING, *lines])
        return Turn(Speaker.USER, question)

    def _cost(self, text: str) -> int:
        return self.tokenizer.count(text)

    async def _call(self, prompt: str, background: bool, owner: str | None) -> str:
        if background:
            deltas = self.generator.stream(prompt, self.params, owner=owner, background=True)
        else:
            deltas = self.generator.stream(prompt, self.params, owner=owner)
        parts = [delta async for delta in deltas]
        return clean_text("".join(parts)).strip()


class RollingSummaries:
    """Each conversation's summary of what fell out of the window, kept up to date in the
    background after answers. `window` is the answers' history window (its budget is the
    prompt's); the summary is rewritten once the turns after it no longer fit, to cover all
    but the newest turns that take half the room, so it is not rewritten after every answer."""

    def __init__(self, store: SummaryStore, window: HistoryWindow, summariser: Summariser) -> None:
        self.store = store
        self.window = window
        self.summariser = summariser
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        self.written = 0  # summaries saved (for logs and tests)

    async def current(self, conversation: int) -> Summary | None:
        return await self.store.summary(conversation)

    def room(self) -> int:
        """Tokens the turns after a summary may take in a prompt."""
        longest = Summary("", 0)
        head = sum(turn_cost(t, self.window.tokenizer, self.window.budget)
                   for t in exchange(longest))
        return (self.window.budget - head - self.summariser.params.max_new_tokens
                - self.window.tokenizer.count(REPLY_CUE) - 1)

    def after_answer(self, conversation: int) -> None:
        """An answer was sent: bring the summary up to date in the background (one task per
        conversation; asked again while it runs, it runs once more after)."""
        if conversation in self._tasks:
            self._again.add(conversation)
            return
        task = asyncio.create_task(self._run(conversation), name=f"summary-{conversation}")
        self._tasks[conversation] = task

    async def _run(self, conversation: int) -> None:
        try:
            while True:
                self._again.discard(conversation)
                try:
                    await self.refresh(conversation)
                except RinnaError as exc:  # busy, closed, storage: written after a later answer
                    log.warning("conversation %d: summary not written (%s)", conversation,
                                type(exc).__name__)
                if conversation not in self._again:
                    return
        finally:
            self._tasks.pop(conversation, None)

    async def refresh(self, conversation: int) -> bool:
        """Write the summary anew if turns after it no longer fit the prompt. Returns whether
        a summary was saved."""
        current = await self.store.summary(conversation)
        after = None if current is None else current.upto
        turns = await self.window.after(conversation, after)
        costs = [self.window.cost(t.turn) for t in turns]
        room = self.room()
        if sum(costs) <= room:
            return False
        kept, used = 0, 0
        for cost in reversed(costs):  # the newest turns that take half the room stay turns
            if used + cost > room // 2:
                break
            used, kept = used + cost, kept + 1
        covered: list[StoredTurn] = turns[:len(turns) - kept]
        written = await self.summariser.write([t.turn for t in covered],
                                              None if current is None else current.text)
        if written is None:
            return False
        saved = await self.store.save_summary(conversation, written.text, covered[-1].id,
                                              after, fingerprint(covered))
        if saved:
            self.written += 1
            log.info("conversation %d: summary written over %d turns in %d model calls",
                     conversation, len(covered), written.calls)
        return saved

    async def idle(self) -> None:
        """Wait until no summary is being written (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def build_summaries(settings: Settings, store: SummaryStore, generator: Generator,
                    tokenizer: Tokenizer) -> RollingSummaries | None:
    """The rolling summaries the service runs (None with SUMMARY=off)."""
    if not settings.summary:
        return None
    window = HistoryWindow(store, tokenizer, settings.prompt_budget)  # type: ignore[arg-type]
    return RollingSummaries(store, window, Summariser(
        generator, tokenizer, settings.context_tokens, summary_params(settings)))


def summary_params(settings: Settings) -> GenerationParams:
    """The model card's sampling, SUMMARY_TOKENS long."""
    return GenerationParams(max_new_tokens=settings.summary_tokens,
                            temperature=settings.temperature,
                            repetition_penalty=settings.repetition_penalty)
