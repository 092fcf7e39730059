"""A summary asked for (「要約」: a message shortcut, a context menu, `/rinna 要約`, `/summary`, a
mention saying 要約): written by the model from the thread's messages, posted as the answer.

It goes through the chat service like any answer (bot/core/delivery.py): recorded before the platform
is told, its placeholder kept, the person's fair share of the generator, exactly once across
redeliveries and restarts (the record notes it is a summary request, so a restart finishes it
as one, and 「もう一度」 on it writes a summary again). What it summarises: the messages the
platform shows (the thread, or a channel's last messages), read whole up to a cap; without them
(a DM, the console, a restart, a regeneration) the stored history. A thread the bot had not
joined is read into the history as a first question would read it. Long material is
summarised in chunks that fit the window (bot/core/summary.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.conversation import Turn
from bot.errors import RinnaError
from bot.core.history_window import HistoryWindow
from bot.core.notices import as_history
from bot.ports.records import Delivery, ImportedTurn
from bot.ports.store import TurnStore
from bot.core.summary import Summariser, summary_params
from bot.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.engine.generator import Generator

SUMMARY_HEADING = "これまでの{count}件のメッセージの要約です。"
SUMMARY_HEADING_CAPPED = "新しい{count}件のメッセージの要約です（それより古いメッセージは読んでいません）。"
NOTHING_TO_SUMMARISE = "要約するメッセージがまだありません。"
SUMMARY_FAILED = "要約をうまく書けませんでした。しばらくしてから、もう一度お試しください。"


class SummaryFailed(RinnaError):
    user_message = SUMMARY_FAILED


class SummaryRequests:
    def __init__(self, summariser: Summariser, window: HistoryWindow) -> None:
        self.summariser = summariser
        self.window = window

    async def material(self, delivery: Delivery, turn_id: int,
                       read: Sequence[ImportedTurn] | None) -> list[Turn]:
        """What to summarise: the platform's messages when it could show them (`read`; the
        bot's notices left out), else the stored history before the request."""
        if read is not None:
            return [kept for item in read if (kept := as_history(item[0])) is not None]
        stored = await self.window.after(delivery.conversation, None)
        return [s.turn for s in stored if s.id < turn_id]

    async def write(self, turns: Sequence[Turn], owner: str | None) -> str:
        """The summary to post (with a first line saying how many messages it covers)."""
        if not turns:
            return NOTHING_TO_SUMMARISE
        written = await self.summariser.write(turns, background=False, owner=owner)
        if written is None:
            raise SummaryFailed("the model wrote no summary")
        heading = SUMMARY_HEADING if written.read == len(turns) else SUMMARY_HEADING_CAPPED
        return f"{heading.format(count=written.read)}\n{written.text}"


def build_summary_requests(settings: Settings, store: TurnStore, generator: Generator,
                           tokenizer: Tokenizer) -> SummaryRequests:
    """Summaries on request as the service runs them (SUMMARY_TOKENS long)."""
    return SummaryRequests(
        Summariser(generator, tokenizer, settings.context_tokens, summary_params(settings)),
        HistoryWindow(store, tokenizer, settings.prompt_budget))
