"""Flood: user A sends 100 requests at once, user B one more once A's are queued. How long
does B wait for the whole answer, against B alone on an idle generator?

Three policies of the same generator: first come, first served (the queue before round-robin;
`fair=False`), round-robin across users with no per-user bound, and the shipped default
(round-robin, MAX_PER_USER=2: A's extra requests are refused at once).

    python -m benchmarks.flood            (tiny model, CPU; --rounds, --max-new, --max-batch)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass

from benchmarks.common import machine, prompt, tiny_settings
from bot.config import Settings
from bot.errors import UserBusyError
from bot.engine.generation import GenerationParams
from bot.engine.generator import LocalGenerator

FLOOD = 100


@dataclass(frozen=True)
class Result:
    policy: str
    alone_s: float  # B on an idle generator (median)
    flooded_s: float  # B behind A's flood (median)
    position: int | None  # B's first queue position, the worst round (None: never waited)
    a_accepted: int  # of A's 100, how many the generator took
    a_before_b: int  # A's answers completed before B's
    alone_tokens: int  # tokens the engine generated while B was answered alone
    flooded_tokens: int  # ... and behind the flood: machine-independent work ahead of B


async def make(settings: Settings, *, fair: bool, max_per_user: int) -> LocalGenerator:
    from bot.engine.model_loader import build_engine

    generator = LocalGenerator(lambda: build_engine(settings), queue_size=FLOOD + 8,
                               max_per_user=max_per_user, fair=fair,
                               default_params=GenerationParams(
                                   max_new_tokens=settings.max_new_tokens))
    return await generator.start()


async def answer(generator: LocalGenerator, i: int, owner: str, params: GenerationParams,
                 positions: list[int] | None = None) -> float:
    started = time.perf_counter()
    async for _ in generator.stream(prompt(i), params, owner=owner,
                                    on_wait=positions.append if positions is not None else None):
        pass
    return time.perf_counter() - started


async def wait_until(condition, timeout: float = 600.0) -> None:  # noqa: ANN001
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("flood did not queue")
        await asyncio.sleep(0.001)


@dataclass(frozen=True)
class Sample:
    alone_s: float
    alone_tokens: int
    flooded_s: float
    flooded_tokens: int
    position: int  # 0: admitted without waiting
    accepted: int
    before: int


async def run_round(settings: Settings, policy: str, *, fair: bool,
                    max_per_user: int) -> Sample:
    """One fresh generator: B alone, then B behind A's flood (its worker ends with it, so no
    idle torch thread slows the next round)."""
    generator = await make(settings, fair=fair, max_per_user=max_per_user)
    params = GenerationParams(max_new_tokens=settings.max_new_tokens, seed=0)
    try:
        await answer(generator, 0, "warm-up", params)
        tokens = generator.stats().generated_tokens
        alone = await answer(generator, 1, "B", params)
        await asyncio.sleep(0.01)  # the worker publishes its count after the last step
        alone_tokens = generator.stats().generated_tokens - tokens
        done_order: list[str] = []

        async def a(i: int) -> None:
            try:
                await answer(generator, i, "A", params)
                done_order.append("A")
            except UserBusyError:
                done_order.append("refused")

        flood = [asyncio.create_task(a(i)) for i in range(FLOOD)]
        # B asks once A's flood is in the generator (or refused), as a second user would.
        await wait_until(lambda: generator.stats().waiting + generator.stats().running
                         + done_order.count("refused") >= FLOOD - done_order.count("A"))
        positions: list[int] = []
        tokens = generator.stats().generated_tokens
        flooded = await answer(generator, 1, "B", params, positions)
        flooded_tokens = generator.stats().generated_tokens - tokens
        before = done_order.count("A")
        await asyncio.gather(*flood)
        print(f"{policy}: B alone {alone:.2f} s, behind the flood {flooded:.2f} s, first "
              f"position {positions[0] if positions else '-'}", file=sys.stderr)
        return Sample(alone, alone_tokens, flooded, flooded_tokens,
                      positions[0] if positions else 0, FLOOD - done_order.count("refused"),
                      before)
    finally:
        await generator.aclose()


def summarise(policy: str, samples: list[Sample]) -> Result:
    def mid(values: list[float]) -> float:
        return statistics.median(values)

    return Result(policy, mid([x.alone_s for x in samples]), mid([x.flooded_s for x in samples]),
                  max(x.position for x in samples) or None,
                  int(mid([x.accepted for x in samples])), int(mid([x.before for x in samples])),
                  int(mid([x.alone_tokens for x in samples])),
                  int(mid([x.flooded_tokens for x in samples])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    settings = tiny_settings(max_new_tokens=args.max_new, max_batch=args.max_batch,
                             device=args.device)
    policies = [("first come, first served (before)", False, FLOOD + 1),
                ("round-robin, no per-user bound", True, FLOOD + 1),
                ("round-robin, MAX_PER_USER=2 (shipped default)", True, 2)]
    samples: dict[str, list[Sample]] = {name: [] for name, _, _ in policies}
    for _ in range(args.rounds):  # policies interleaved: a busy moment hits all of them
        for name, fair, bound in policies:
            samples[name].append(asyncio.run(run_round(settings, name, fair=fair,
                                                       max_per_user=bound)))
    results = [summarise(name, samples[name]) for name, _, _ in policies]
    print(f"Flood: user A sends {FLOOD} requests at once, then user B one; tiny model, "
          f"{args.device}, MAX_BATCH={args.max_batch}, max_new_tokens={args.max_new}, "
          f"median of {args.rounds}.")
    print(f"Machine: {machine()}")
    print("| policy | B alone | B under the flood | slowdown | tokens generated meanwhile "
          "(alone / flood) | B's first position (worst) | A's accepted | A's answered before B |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.policy} | {r.alone_s * 1000:.0f} ms | {r.flooded_s * 1000:.0f} ms | "
              f"{r.flooded_s / r.alone_s:.1f}× | {r.alone_tokens} / {r.flooded_tokens} | "
              f"{r.position or '–'} | {r.a_accepted} | {r.a_before_b} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
