"""What an answer's prompt holds: the conversation's summary (when it has one), then the newest
turns that fit, and how many earlier turns it could not read (for the window notice)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.conversation import Turn
from bot.core.history_window import HistoryWindow
from bot.ports.store import SummaryStore
from bot.core.prompt import FittedPrompt, fit_prompt
from bot.core.summary import RollingSummaries, exchange


@dataclass(frozen=True, slots=True)
class PromptContext:
    fitted: FittedPrompt
    unread: int  # earlier turns neither in the prompt nor covered by the summary in it


class PromptContexts:
    def __init__(self, store: SummaryStore, window: HistoryWindow,
                 summaries: RollingSummaries | None = None) -> None:
        self.store = store
        self.window = window
        self.summaries = summaries  # None: SUMMARY=off, the oldest turns are only dropped

    async def read(self, conversation: int, upto: int, *, budget: int | None = None,
                   head: Sequence[Turn] = ()) -> PromptContext:
        """The prompt answering turn `upto`, fitted to `budget` (the window's when None), after
        `head` (a scope's persona: never dropped) and the summary."""
        budget = self.window.budget if budget is None else budget
        summary = None if self.summaries is None else await self.summaries.current(conversation)
        after = None if summary is None else summary.upto
        stored = await self.window.stored(conversation, upto, after)
        if not stored:  # a summary covering the question itself (never written so): without
            summary, after = None, None
            stored = await self.window.stored(conversation, upto)
        fitted = fit_prompt([s.turn for s in stored], self.window.tokenizer, budget,
                            head=head, summary=() if summary is None else exchange(summary))
        oldest = stored[len(stored) - len(fitted.turns)].id
        unread = await self.store.count_turns(
            conversation, after if fitted.summarised else None, oldest)
        return PromptContext(fitted, unread)
