"""Burst: N chats arriving at once. The shared generator against one-at-a-time generate.

    python -m benchmarks.burst            (8 and 32 chats, tiny model, CPU)
"""

from __future__ import annotations

import asyncio
import sys
import time

from benchmarks.common import machine, model_card_generate, prompt, tiny_settings
from bot.engine.generator import load_generator
from bot.engine.sampling import GenerationParams

MAX_NEW = 64


async def generator_burst(settings, n: int) -> tuple[float, int]:
    generator = await load_generator(settings)
    params = GenerationParams(max_new_tokens=MAX_NEW)
    try:
        async def one(i: int) -> None:
            async for _ in generator.stream(prompt(i), params):
                pass
        await one(0)  # warm-up
        before = generator.tokens_generated
        started = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - started
        await asyncio.sleep(0)
        return wall, generator.tokens_generated - before
    finally:
        await generator.aclose()


def main() -> None:
    settings = tiny_settings()
    rows = []
    for n in (8, 32):
        wall, tokens = asyncio.run(generator_burst(settings, n))
        model_card_generate(settings, [prompt(0)], MAX_NEW)  # warm-up
        base = model_card_generate(settings, [prompt(i) for i in range(n)], MAX_NEW)
        speedup = base.wall_s / wall
        rows.append(f"| {n} | {wall:.2f} s | {tokens / wall:.0f} | {base.wall_s:.2f} s | "
                    f"{base.tokens / base.wall_s:.0f} | {speedup:.1f}x |")
    print(f"Burst, tiny model, CPU, max_new_tokens={MAX_NEW}, sampling as the model card.")
    print(f"Machine: {machine()}")
    print("| chats | generator wall | generator tok/s | one-at-a-time wall | one-at-a-time tok/s"
          " | speed-up |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
