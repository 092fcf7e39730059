"""Loop lag: a 5 ms heartbeat on the event loop while 8 chats stream. Target: p99 < 20 ms.

    python -m benchmarks.loop_lag
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import machine, median, percentile, prompt, tiny_settings
from bot.engine.generator import load_generator
from bot.engine.sampling import GenerationParams

BEAT = 0.005


async def measure(settings, chats: int, rounds: int) -> tuple[list[float], int]:
    generator = await load_generator(settings)
    lags: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        expected = time.perf_counter() + BEAT
        while not done.is_set():
            await asyncio.sleep(BEAT)
            now = time.perf_counter()
            lags.append(max(0.0, now - expected) * 1000)
            expected = now + BEAT

    async def chat(i: int) -> int:
        deltas = 0
        async for _ in generator.stream(prompt(i), GenerationParams(max_new_tokens=128)):
            deltas += 1
        return deltas

    try:
        beat = asyncio.create_task(heartbeat())
        total = 0
        for _ in range(rounds):
            total += sum(await asyncio.gather(*[chat(i) for i in range(chats)]))
        done.set()
        await beat
    finally:
        await generator.aclose()
    return lags, total


def main() -> None:
    settings = tiny_settings()
    lags, deltas = asyncio.run(measure(settings, chats=8, rounds=5))
    print("Loop lag, tiny model, CPU: 8 chats streaming (5 rounds of 128 new tokens), "
          "5 ms heartbeat.")
    print(f"Machine: {machine()}")
    print(f"beats {len(lags)}, deltas delivered {deltas}; lag median {median(lags):.2f} ms, "
          f"p99 {percentile(lags, 99):.2f} ms, max {max(lags):.2f} ms "
          f"(target p99 < 20 ms: {'met' if percentile(lags, 99) < 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
