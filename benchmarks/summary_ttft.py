"""Time to first token of a question while a conversation's summary is being rebuilt, against
the same question with nothing else running (issue 28). Target on a CUDA GPU, real shape:
within 1.2x.

The summary is a background request (bot/engine/scheduler.py): a question arriving while it is
prefilled or decoded aborts it before the next engine step, and it is redone once the question
is answered. Each run starts a summary (a ~1,700-token summarising prompt, 200 new tokens),
lets the question arrive at a random point of its work (during its prefill, or after 1-100 of
its tokens), and times the question's first token; the summary then finishes before the next
run. The baseline asks the same question alone, in the same process, alternating with them.

    python -m benchmarks.summary_ttft                          (CPU fixture: the tiny model)
    python -m benchmarks.summary_ttft --shape real --device cuda   (real shape, random fp16)
    python -m benchmarks.summary_ttft --json out.json          (the numbers, for RESULTS.md)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, median, percentile  # noqa: E402
from bot.conversation import Speaker, Turn  # noqa: E402
from bot.engine.generation import GenerationParams  # noqa: E402
from bot.engine.generator import LocalGenerator, load_generator  # noqa: E402
from bot.core.prompt import build_prompt  # noqa: E402
from bot.core.summary import Summariser  # noqa: E402
from bot.engine.tokenizer import Tokenizer  # noqa: E402

QUESTION_TOKENS = 1500  # a thread's window, as an answer's prompt holds it
SUMMARY_TOKENS = 1700  # a summarising prompt of one chunk
SUMMARY_NEW = 200  # SUMMARY_TOKENS' default
QUESTION_NEW = 16


def text_of(tokenizer: Tokenizer, tokens: int, seed: int) -> list[Turn]:
    """Turns of a conversation whose prompt takes about `tokens` tokens."""
    words = ["猫", "東京", "天気", "電車", "料理", "山", "コーヒー", "映画", "音楽", "春"]
    rng = random.Random(seed)
    turns: list[Turn] = []
    while len(tokenizer.encode(build_prompt(turns or [Turn(Speaker.USER, "")]))) < tokens:
        speaker = Speaker.USER if len(turns) % 2 == 0 else Speaker.SYSTEM
        turns.append(Turn(speaker, "、".join(rng.choice(words) for _ in range(12)) + "。"))
    return turns


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.0005)


async def first_token_s(generator: LocalGenerator, prompt: str) -> float:
    params = GenerationParams(max_new_tokens=QUESTION_NEW, do_sample=False)
    started = time.perf_counter()
    first = None
    async for _ in generator.stream(prompt, params):
        if first is None:
            first = time.perf_counter() - started
    assert first is not None
    return first


async def drain(deltas: AsyncIterator[str]) -> str:
    return "".join([d async for d in deltas])


async def measure(settings: object, runs: int, seed: int,
                  compare: bool = False) -> dict[str, object]:
    generator = await load_generator(settings)  # type: ignore[arg-type]
    assert isinstance(generator, LocalGenerator) and generator.tokenizer is not None
    tokenizer = generator.tokenizer
    try:
        question = build_prompt(text_of(tokenizer, QUESTION_TOKENS, seed))
        summariser = Summariser(generator, tokenizer, 2048,
                                GenerationParams(max_new_tokens=SUMMARY_NEW, do_sample=False))
        chunk = summariser.chunks(text_of(tokenizer, SUMMARY_TOKENS, seed + 1), None)[-1]
        summary_prompt = summariser._prompt(chunk, None)
        summary_params = GenerationParams(max_new_tokens=SUMMARY_NEW, do_sample=False,
                                          seed=seed)
        await first_token_s(generator, question)  # warm-up, both shapes
        await drain(generator.stream(summary_prompt, summary_params, background=True))
        rng = random.Random(seed)
        alone: list[float] = []
        busy: list[float] = []
        plain: list[float] = []  # --compare: the summary as an ordinary request
        phases: list[int] = []
        for _ in range(runs):  # alternated, so a busy machine's drift falls on both alike
            alone.append(await first_token_s(generator, question))
            after = rng.choice([0, 0, 1, 10, 50, 100])  # its tokens before the question
            phases.append(after)
            for background, into in ((True, busy), (False, plain))[:2 if compare else 1]:
                base = generator.tokens_generated
                summary = asyncio.create_task(drain(generator.stream(
                    summary_prompt, summary_params, background=background)))
                await until(lambda: generator.stats().background == 1
                            or generator.stats().running == 1)
                await until(lambda: generator.tokens_generated >= base + after)
                into.append(await first_token_s(generator, question))
                await summary
        preempted = generator.preempted
    finally:
        await generator.aclose()
    return {
        "question_prompt_tokens": len(tokenizer.encode(question)),
        "summary_prompt_tokens": len(tokenizer.encode(summary_prompt)),
        "alone_ms": [round(s * 1000, 2) for s in alone],
        "during_rebuild_ms": [round(s * 1000, 2) for s in busy],
        "during_plain_request_ms": [round(s * 1000, 2) for s in plain],
        "arrived_after_summary_tokens": phases,
        "preempted": preempted,
    }


def settings_for(shape: str, device: str) -> object:
    from benchmarks.common import tiny_settings

    if shape == "tiny":
        return tiny_settings(device=device)
    from benchmarks.gpu import REAL_SHAPE, write_random_model

    directory = Path(tempfile.mkdtemp(prefix="rinna-summary-bench-"))
    write_random_model(directory, REAL_SHAPE, device)
    return tiny_settings(model_id=str(directory), device=device,
                         quantization="fp16" if device.startswith("cuda") else "fp32")


def report(results: dict[str, object], shape: str, device: str) -> str:
    alone = results["alone_ms"]
    busy = results["during_rebuild_ms"]
    assert isinstance(alone, list) and isinstance(busy, list)
    ratio_median = median(busy) / median(alone)
    ratio_p95 = percentile(busy, 95) / percentile(alone, 95)
    target = "met" if ratio_median <= 1.2 else "NOT met"
    return "\n".join([
        f"Time to first token, {results['question_prompt_tokens']}-token question, "
        f"{shape} shape on {device}; summary {results['summary_prompt_tokens']} prompt tokens "
        f"+ {SUMMARY_NEW} new, {len(busy)} runs each.",
        f"Machine: {machine()}",
        f"alone:          median {median(alone):.1f} ms, p95 {percentile(alone, 95):.1f} ms",
        f"during rebuild: median {median(busy):.1f} ms, p95 {percentile(busy, 95):.1f} ms "
        f"(summaries preempted: {results['preempted']})",
        f"ratio: median {ratio_median:.2f}x, p95 {ratio_p95:.2f}x "
        f"(target <= 1.2x on a GPU: {target})",
        *_plain(results, alone),
    ])


def _plain(results: dict[str, object], alone: list[float]) -> list[str]:
    plain = results.get("during_plain_request_ms")
    if not isinstance(plain, list) or not plain:
        return []
    return [f"summary as an ordinary request (no background class): median "
            f"{median(plain):.1f} ms, p95 {percentile(plain, 95):.1f} ms, ratio "
            f"{median(plain) / median(alone):.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compare", action="store_true",
                        help="also time the question behind the summary sent as an ordinary "
                             "request (what the background class saves)")
    args = parser.parse_args()
    results = asyncio.run(measure(settings_for(args.shape, args.device), args.runs, args.seed,
                                  args.compare))
    results.update(shape=args.shape, device=args.device, machine=machine())
    print(report(results, args.shape, args.device))
    if args.json is not None:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
