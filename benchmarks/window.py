"""Prompt window: load a 10,000-turn conversation's history from SQLite and fit it into the
prompt budget (what every reply does before generating). Target: under 5 ms.

    python -m benchmarks.window
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import QUESTIONS, machine, median, percentile
from bot.core.chat import ChatConfig, ChatService
from bot.conversation import ConversationKey, Speaker, Turn
from bot.core.prompt import fit_prompt
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from bot.engine.tiny_model import build_tokenizer

TURNS = 10_000
RUNS = 300
KEY = ConversationKey("bench", "w", "c", "t")


async def measure() -> tuple[list[float], int, int]:
    directory = Path(tempfile.mkdtemp(prefix="rinna-window-"))
    tokenizer = Tokenizer.from_file(build_tokenizer(directory))
    store = await HistoryStore.open(directory / "window.sqlite3")
    turns = [(Turn(Speaker.USER if i % 2 == 0 else Speaker.SYSTEM,
                   f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"), f"m{i}") for i in range(TURNS)]
    await store.import_turns(KEY, turns)
    conversation = await store.find(KEY)
    assert conversation is not None
    chat = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(prompt_budget=2048 - 128))
    times: list[float] = []
    for _ in range(RUNS):
        started = time.perf_counter()
        history = await chat.window.history(conversation)
        fitted = fit_prompt(history, tokenizer, chat.config.prompt_budget)
        times.append((time.perf_counter() - started) * 1000)
    await store.close()
    return times, len(fitted.turns), len(fitted.ids)


def main() -> None:
    times, kept, tokens = asyncio.run(measure())
    print(f"Prompt window of a {TURNS:,}-turn conversation (SQLite via aiosqlite, fitted to "
          f"1,920 tokens: {kept} newest turns, {tokens} tokens), {RUNS} runs.")
    print(f"Machine: {machine()}")
    p95 = percentile(times, 95)
    print(f"median {median(times):.2f} ms, p95 {p95:.2f} ms "
          f"(target < 5 ms: {'met' if p95 < 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
