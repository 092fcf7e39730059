"""What community settings cost each answer: looking up a conversation's settings (host <
server < channel < thread) from the per-process cache, the same after a change dropped its
scope (a SQLite read), and a change itself (value + audit row, one transaction). Also the
prompt with a persona at its head against the same prompt without one (fit + encode + the
token-level boundary check), on the tiny model's tokenizer. Target: a cached lookup well under
0.1 ms; a miss under 1 ms (either is far below a token's decode time).

    python -m benchmarks.community
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import machine, median, percentile, tiny_settings
from bot.core.community import Community, HostPolicy
from bot.conversation import ConversationKey, Speaker, Turn
from bot.core.personas import READY
from bot.ports.community import Scope
from bot.core.privilege import Member
from bot.core.prompt import fit_prompt
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore

ROUNDS = 2000
CHANGES = 200
KEY = ConversationKey("discord", "G1", "C1", "T1")
ADMIN = Member("discord", "U0ADMIN", "G1", manages_workspace=True)


async def timed(call, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def row(name: str, times: list[float]) -> str:
    return f"| {name} | {median(times):.3f} ms | {percentile(times, 95):.3f} ms |"


async def main() -> None:
    settings = tiny_settings()
    tokenizer = Tokenizer.from_file(settings.model_id + "/spiece.model")
    store = await HistoryStore.open(settings.database_path)
    try:
        community = Community(store, HostPolicy.from_settings(settings), tokenizer)
        await community.change(ADMIN, Scope("discord", "G1"), "temperature", "0.5")
        await community.change(ADMIN, Scope("discord", "G1", "C1"), "persona", "keigo")
        await community.change(ADMIN, Scope("discord", "G1", "C1", "T1"), "max_new_tokens", "64")
        hit = await timed(lambda: community.effective(KEY), ROUNDS)

        async def miss() -> None:
            community.invalidate(Scope("discord", "G1", "C1", "T1"))
            await community.effective(KEY)

        missed = await timed(miss, ROUNDS)
        values = iter(["0.6", "0.7"] * CHANGES)
        changed = await timed(lambda: community.change(
            ADMIN, Scope("discord", "G1", "C1"), "temperature", next(values)), CHANGES)
    finally:
        await store.close()
    history = [Turn(Speaker.USER if i % 2 == 0 else Speaker.SYSTEM, f"これは{i}番目の話です。" * 6)
               for i in range(200)]
    budget = settings.prompt_budget

    async def fit(persona: tuple[Turn, ...]) -> None:
        fit_prompt(history, tokenizer, budget, head=persona)

    await fit(())  # warm: the tokenizer's first calls
    plain, with_persona = [], []
    for _ in range(5):  # interleaved, so a busy machine weighs on both alike
        plain += await timed(lambda: fit(()), 40)
        with_persona += await timed(lambda: fit(READY["keigo"].turns), 40)
    print(f"machine: {machine()}")
    print("| what | median | p95 |\n|---|---|---|")
    for name, times in (("settings lookup, cached", hit),
                        ("settings lookup, thread scope re-read", missed),
                        ("settings change (value + audit row)", changed),
                        (f"fit_prompt, 200 turns into {budget} tokens, no persona", plain),
                        ("the same with the keigo persona at the head", with_persona)):
        print(row(name, times))


if __name__ == "__main__":
    asyncio.run(main())
