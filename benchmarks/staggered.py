"""Staggered arrivals: chats arriving at Poisson intervals (seeded), 4-8 in flight.

Time to first token and to last token, median and p95, for three policies of the same
engine: continuous joining (what ships), batch-at-a-time (a batch runs to its end before the
next starts), and one-at-a-time (MAX_BATCH=1, the model card's behaviour).

    python -m benchmarks.staggered
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from benchmarks.common import machine, median, percentile, prompt, tiny_settings
from bot.engine.batching import BatchEngine, EngineConfig
from bot.engine.generator import LocalGenerator
from bot.engine.model_loader import load_model
from bot.engine.sampling import GenerationParams

CHATS = 64
MAX_NEW = 64
SEED = 7


@dataclass
class Timing:
    first: float
    last: float


def make_generator(settings, **config: object) -> LocalGenerator:
    def factory() -> BatchEngine:
        model, tokenizer, _ = load_model(settings)
        return BatchEngine(model, tokenizer, EngineConfig(**config))
    return LocalGenerator(factory, queue_size=1024)


async def run(generator: LocalGenerator, gaps: list[float]) -> tuple[list[Timing], float]:
    await generator.start()
    params = GenerationParams(max_new_tokens=MAX_NEW)
    in_flight: list[int] = []
    timings: list[Timing] = []

    async def chat(i: int) -> None:
        arrived = time.perf_counter()
        first = None
        async for _ in generator.stream(prompt(i), params):
            first = first or time.perf_counter() - arrived
        timings.append(Timing(first or float("nan"), time.perf_counter() - arrived))

    async def sample_in_flight() -> None:
        while True:
            in_flight.append(generator.running + generator.waiting)
            await asyncio.sleep(0.01)

    try:
        async for _ in generator.stream(prompt(0), params):  # warm-up
            pass
        sampler = asyncio.create_task(sample_in_flight())
        tasks = []
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(chat(i)))
        await asyncio.gather(*tasks)
        sampler.cancel()
    finally:
        await generator.aclose()
    return timings, sum(in_flight) / max(1, len(in_flight))


async def calibrate(settings) -> float:
    """Seconds one chat takes alone: sets the arrival rate."""
    generator = make_generator(settings, max_batch=1)
    await generator.start()
    try:
        params = GenerationParams(max_new_tokens=MAX_NEW, seed=0)
        started = time.perf_counter()
        for i in range(4):
            async for _ in generator.stream(prompt(i), params):
                pass
        return (time.perf_counter() - started) / 4
    finally:
        await generator.aclose()


def arrivals(rate: float) -> list[float]:
    """Seeded Poisson gaps between the chats' arrivals."""
    rng = random.Random(SEED)
    return [0.0] + [rng.expovariate(rate) for _ in range(CHATS - 1)]


def main() -> None:
    settings = tiny_settings()
    alone = asyncio.run(calibrate(settings))
    # Aim for ~6 in flight under continuous joining: a first guess from the solo time, then
    # one correction by Little's law (in flight = rate x time in system) from a trial run.
    rate = 6 / (2.0 * alone)
    _, trial_flight = asyncio.run(run(make_generator(settings, max_batch=32),
                                      arrivals(rate)))
    rate *= 6 / max(trial_flight, 0.5)
    gaps = arrivals(rate)
    policies = {
        "continuous joining": dict(max_batch=32, continuous=True),
        "batch-at-a-time": dict(max_batch=32, continuous=False),
        "one-at-a-time": dict(max_batch=1),
    }
    print(f"Staggered arrivals, tiny model, CPU: {CHATS} chats, Poisson rate {rate:.1f}/s "
          f"(seed {SEED}), max_new_tokens={MAX_NEW}; one chat alone takes {alone * 1000:.0f} ms.")
    print(f"Machine: {machine()}")
    print("| policy | mean in flight | TTFT median | TTFT p95 | last token median | last token p95 |")
    print("|---|---|---|---|---|---|")
    for name, config in policies.items():
        timings, flight = asyncio.run(run(make_generator(settings, **config), gaps))
        first = [t.first * 1000 for t in timings]
        last = [t.last * 1000 for t in timings]
        print(f"| {name} | {flight:.1f} | {median(first):.0f} ms | {percentile(first, 95):.0f} ms"
              f" | {median(last):.0f} ms | {percentile(last, 95):.0f} ms |")


if __name__ == "__main__":
    main()
