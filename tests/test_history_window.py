"""The history window: how much of a thread the core reads in, counted in tokens (platforms
only hand it texts)."""

from __future__ import annotations

from bot.conversation import Speaker, Turn
from bot.core.history_window import BUDGET_SLACK, HistoryWindow
from bot.core.notices import EMPTY_ANSWER
from bot.engine.tokenizer import Tokenizer


def test_reachable_counts_the_newest_texts_until_the_budget_with_slack(
        tokenizer: Tokenizer) -> None:
    window = HistoryWindow(None, tokenizer, budget=40)  # type: ignore[arg-type]  # no store
    text = "日本で一番高い山は富士山です。"
    cost = window.cost(Turn(Speaker.USER, text))
    fits = int(40 * BUDGET_SLACK) // cost + 1  # counted while the allowance is not passed
    assert window.reachable([text] * 100) == fits < 100
    assert window.reachable([text] * 2) == 2
    assert window.reachable(["", ""] * 100) == window.most_turns() == 20  # empty: free, but bounded


def test_backfill_keeps_the_newest_that_fit_and_drops_the_bots_notices(
        tokenizer: Tokenizer) -> None:
    window = HistoryWindow(None, tokenizer, budget=40)  # type: ignore[arg-type]
    turns = [(Turn(Speaker.USER, f"質問{i}です。"), f"m{i}") for i in range(30)]
    turns.append((Turn(Speaker.SYSTEM, EMPTY_ANSWER), "notice"))
    kept = window.backfill(turns)
    assert kept and kept[-1][1] == "m29" and len(kept) < 30  # newest kept, the notice dropped
    assert sum(window.cost(item[0]) for item in kept) <= 40
