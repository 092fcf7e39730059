"""The store's bookkeeping, SQLite against PostgreSQL (issue 25). Targets: PostgreSQL adds at
most 5 ms p99 per answered message on loopback; the 10,000-turn prompt window read stays
under 5 ms on both.

Per answered message, the store calls one answer makes, each its own transaction: accept ->
take -> show_placeholder (reply ref) -> begin_answer (user turn) -> store_answer (answer
turn) -> finish (answered). The window read is the chat service's history read of a
10,000-turn conversation fitted to 1,920 tokens (as benchmarks.window).

PostgreSQL: BENCH_DATABASE_URL (a database it may fill), else a throwaway cluster started by
tests/pg/cluster.sh on 127.0.0.1 (loopback TCP, fsync as the cluster script sets it: off).

    python -m benchmarks.store
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import QUESTIONS, machine, median, percentile
from bot.conversation import ConversationKey, Speaker, Turn
from bot.core.chat import ChatConfig, ChatService
from bot.core.prompt import fit_prompt
from bot.engine.tiny_model import build_tokenizer
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from storage.postgres import PostgresStore
from tests.fakes import ScriptedGenerator
from tests.pg.fixtures import Cluster, create_database

MESSAGES = 600
CONVERSATIONS = 30
TURNS = 10_000
RUNS = 300


async def bookkeeping(store: Any) -> list[float]:
    """Milliseconds per answered message, over MESSAGES messages in CONVERSATIONS threads."""
    times: list[float] = []
    for n in range(MESSAGES):
        key = ConversationKey("bench", "T", "C", f"t{n % CONVERSATIONS}")
        started = time.perf_counter()
        accepted = await store.accept(key, f"m{n}", QUESTIONS[n % len(QUESTIONS)], "U1")
        taken = await store.take(accepted, "bench-runner")
        assert taken is not None and await store.show_placeholder(taken, f"C/{n}")
        answering = await store.begin_answer(taken)
        assert answering is not None
        assert await store.store_answer(answering, "はい、分かりました。", "はい、分かりました。")
        assert await store.finish(answering)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def window(store: Any, tokenizer: Tokenizer) -> list[float]:
    key = ConversationKey("bench", "w", "c", "t")
    turns = [(Turn(Speaker.USER if i % 2 == 0 else Speaker.SYSTEM,
                   f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"), f"w{i}") for i in range(TURNS)]
    await store.import_turns(key, turns)
    conversation = await store.find(key)
    assert conversation is not None
    chat = ChatService(store, ScriptedGenerator(), tokenizer,
                       ChatConfig(prompt_budget=2048 - 128))
    times: list[float] = []
    for _ in range(RUNS):
        started = time.perf_counter()
        history = await chat.window.history(conversation)
        fit_prompt(history, tokenizer, chat.config.prompt_budget)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def measure(dsn: str, directory: Path) -> dict[str, tuple[list[float], list[float]]]:
    tokenizer = Tokenizer.from_file(build_tokenizer(directory))
    results = {}
    sqlite = await HistoryStore.open(directory / "bench.sqlite3")
    results["SQLite"] = (await bookkeeping(sqlite), await window(sqlite, tokenizer))
    await sqlite.close()
    postgres = await PostgresStore.open(dsn)
    results["PostgreSQL"] = (await bookkeeping(postgres), await window(postgres, tokenizer))
    await postgres.close()
    return results


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="rinna-store-"))
    given = os.environ.get("BENCH_DATABASE_URL")
    cluster = None if given else Cluster.start()
    try:
        dsn = given or asyncio.run(create_database(cluster.dsn))  # type: ignore[union-attr]
        server = subprocess.run(["/usr/lib/postgresql/15/bin/postgres", "--version"],
                                capture_output=True, text=True, check=False).stdout.strip()
        results = asyncio.run(measure(dsn, directory))
    finally:
        if cluster is not None:
            cluster.stop()
    print(f"Store bookkeeping per answered message ({MESSAGES} messages, 6 transactions each) "
          f"and the {TURNS:,}-turn window read ({RUNS} runs).")
    print(f"Machine: {machine()}; {server}, loopback TCP")
    for engine, (answered, read) in results.items():
        print(f"{engine:>10}: per message p50 {median(answered):.2f} ms, p99 "
              f"{percentile(answered, 99):.2f} ms; window p50 {median(read):.2f} ms, p99 "
              f"{percentile(read, 99):.2f} ms")
    added = percentile(results["PostgreSQL"][0], 99) - percentile(results["SQLite"][0], 99)
    worst = max(percentile(read, 99) for _, read in results.values())
    print(f"PostgreSQL adds {added:.2f} ms p99 per message (target <= 5 ms: "
          f"{'met' if added <= 5 else 'NOT met'}); window p99 {worst:.2f} ms at worst "
          f"(target < 5 ms: {'met' if worst < 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
