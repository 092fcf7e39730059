"""The part of a conversation that reaches the prompt, counted in tokens: a thread's earlier
messages read in when the bot joins it (backfill), and the stored turns before a question."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot.conversation import Speaker, Turn
from bot.core.notices import as_history
from bot.ports.records import ImportedTurn, StoredTurn
from bot.ports.store import TurnStore
from bot.core.prompt import turn_cost
from bot.engine.tokenizer import Tokenizer

PAGE = 64  # stored turns read per query, newest first
# A turn costs at least 2 tokens (label and separator): more messages than budget / 2 can never
# fit the prompt. A platform's thread is counted before names are looked up, with some slack
# (names and dropped notices change the count a little); `backfill` then trims exactly.
MIN_TURN_TOKENS = 2
BUDGET_SLACK = 1.5


class HistoryWindow:
    def __init__(self, store: TurnStore, tokenizer: Tokenizer, budget: int) -> None:
        self.store = store
        self.tokenizer = tokenizer
        self.budget = budget

    def cost(self, turn: Turn) -> int:
        return turn_cost(turn, self.tokenizer, self.budget)

    def most_turns(self) -> int:
        """More of a thread's messages than this can never reach the prompt."""
        return max(1, self.budget // MIN_TURN_TOKENS)

    def reachable(self, newest_first: Iterable[str]) -> int:
        """How many of a thread's newest messages (their text, newest first, as read from the
        platform before names are resolved) may reach the prompt: read in only those, so no
        name is looked up for a message that is dropped."""
        allowance = int(self.budget * BUDGET_SLACK)
        used = count = 0
        for text in newest_first:
            if used > allowance or count >= self.most_turns():
                break
            count += 1
            if text:
                used += self.cost(Turn(Speaker.USER, text))
        return count

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
        return [stored.turn for stored in await self.stored(conversation, upto)]

    async def stored(self, conversation: int, upto: int | None = None,
                     after: int | None = None) -> list[StoredTurn]:
        """`history` with the turns' ids; only turns after turn `after` (those a summary
        does not cover)."""
        turns: list[StoredTurn] = []
        used, before = 0, (None if upto is None else upto + 1)
        while used <= self.budget:
            page = await self.store.recent_turns(conversation, PAGE, before)
            for stored in page:
                if after is not None and stored.id <= after:
                    used = self.budget + 1
                    break
                turns.append(stored)
                used += self.cost(stored.turn)
                if used > self.budget:
                    break
            if len(page) < PAGE:
                break
            before = page[-1].id
        turns.reverse()
        return turns

    async def after(self, conversation: int, after: int | None) -> list[StoredTurn]:
        """Every turn of the current history after turn `after` (None: all), oldest first."""
        turns: list[StoredTurn] = []
        before = None
        while True:
            page = await self.store.recent_turns(conversation, PAGE, before)
            newer = [s for s in page if after is None or s.id > after]
            turns.extend(newer)
            if len(page) < PAGE or len(newer) < len(page):
                break
            before = page[-1].id
        turns.reverse()
        return turns
