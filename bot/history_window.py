"""The part of a conversation that reaches the prompt, counted in tokens: a thread's earlier
messages read in when the bot joins it (backfill), and the stored turns before a question."""

from __future__ import annotations

from collections.abc import Sequence

from bot.conversation import Turn
from bot.notices import as_history
from bot.ports.records import ImportedTurn
from bot.ports.store import TurnStore
from bot.prompt import turn_cost
from bot.tokenizer import Tokenizer

PAGE = 64  # stored turns read per query, newest first


class HistoryWindow:
    def __init__(self, store: TurnStore, tokenizer: Tokenizer, budget: int) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.budget = budget

    def cost(self, turn: Turn) -> int:
        return turn_cost(turn, self.tokenizer, self.budget)

    def backfill(self, turns: Sequence[ImportedTurn]) -> list[ImportedTurn]:
        """A thread's earlier messages (oldest first) as they are stored: cleaned, the bot's
        notices left out, only the newest that fit the prompt budget."""
        cleaned: list[ImportedTurn] = [
            (kept, item[1], item[2] if len(item) > 2 else None)
            for item in turns if (kept := as_history(item[0])) is not None]
        used, start = 0, len(cleaned)
        while start > 0:
            used += self.cost(cleaned[start - 1][0])
            if used > self.budget:
                break
            start -= 1
        return cleaned[start:]

    async def history(self, conversation: int, upto: int | None = None) -> list[Turn]:
        """The newest turns up to turn `upto` whose formatted size reaches the prompt budget
        (oldest first)."""
        turns: list[Turn] = []
        used, before = 0, (None if upto is None else upto + 1)
        while used <= self.budget:
            page = await self.store.recent_turns(conversation, PAGE, before)
            for stored in page:
                turns.append(stored.turn)
                used += self.cost(stored.turn)
                if used > self.budget:
                    break
            if len(page) < PAGE:
                break
            before = page[-1].id
        turns.reverse()
        return turns
