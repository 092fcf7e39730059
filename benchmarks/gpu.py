"""GPU: the real model's shape (DESIGN.md's config) with random weights, 4-bit, on CUDA.

Tokens/s at batch 1, 8 and 16, time to first token, peak GPU memory, and the model card's
one-at-a-time `generate` on the same card in the same run. No hub: the weights are random
and written to a temporary directory, then loaded through the bot's own loader
(bitsandbytes NF4, double quantisation, fp16 compute). Under 8 minutes on one H100.

    python -m benchmarks.gpu              (needs CUDA)
    python -m benchmarks.gpu --smoke      (a small shape on CPU, to check the script itself)
    python -m benchmarks.gpu --device cpu --batches 1,4 --max-new 8 --baseline 1
                                          (the real shape on CPU: what to expect without a GPU)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median, prompt
from bot.config import load_settings
from bot.engine import BatchEngine, EngineConfig
from bot.generator import LocalGenerator
from bot.model_loader import load_model
from bot.sampling import GenerationParams
from tests.tiny_model import build_tokenizer

REAL_SHAPE = dict(vocab_size=32000, hidden_size=2816, num_hidden_layers=36,
                  num_attention_heads=22, intermediate_size=11264)
SMOKE_SHAPE = dict(vocab_size=32000, hidden_size=128, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=512)
MAX_NEW = 128  # --max-new changes it


def write_random_model(directory: Path, shape: dict[str, int], device: str) -> None:
    import sentencepiece as spm
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**shape, rotary_pct=1.0, use_parallel_residual=False,
                           tie_word_embeddings=False, max_position_embeddings=2048,
                           bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # initialise in fp16: half the memory of fp32
    try:
        with torch.device(device):
            model = GPTNeoXForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    # The stand-in tokenizer has 1,000 pieces, the model 32,000 outputs: zero the output rows
    # past the tokenizer so that sampled ids decode to text (top-k never reaches a 0 logit),
    # while the matmul keeps the real model's full cost.
    pieces = spm.SentencePieceProcessor(model_file=str(build_tokenizer(directory)))
    with torch.no_grad():
        model.get_output_embeddings().weight[pieces.get_piece_size():] = 0
    model.save_pretrained(directory)
    (directory / "generation_config.json").unlink(missing_ok=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def long_prompt(i: int) -> str:
    return prompt(i) * 1  # ~30 tokens of real text


async def run_batches(generator: LocalGenerator, sizes: list[int]) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    # random weights rarely sample eos; the 128-token cap makes every row the same length
    params = GenerationParams(max_new_tokens=MAX_NEW, seed=1)
    async for _ in generator.stream(long_prompt(0), GenerationParams(max_new_tokens=8)):
        pass  # warm-up (CUDA kernels, bitsandbytes)
    for size in sizes:
        firsts: list[float] = []

        async def one(i: int) -> None:
            started = time.perf_counter()
            first = None
            async for _ in generator.stream(long_prompt(i), params):
                if first is None:
                    first = time.perf_counter() - started
            firsts.append(first if first is not None else float("nan"))

        before = generator.tokens_generated
        started = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(size)])
        wall = time.perf_counter() - started
        await asyncio.sleep(0)
        tokens = generator.tokens_generated - before
        results[size] = {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                         "ttft_median_ms": median(firsts) * 1000}
    return results


def baseline(engine: BatchEngine, count: int) -> dict[str, float]:
    import torch

    model, tokenizer = engine.model, engine.tokenizer
    tokens, started = 0, time.perf_counter()
    for i in range(count):
        ids = torch.tensor([tokenizer.encode(long_prompt(i))], device=engine.device)
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, max_new_tokens=MAX_NEW, temperature=0.7,
                                 repetition_penalty=1.1, pad_token_id=tokenizer.pad_id,
                                 bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
        tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - started
    return {"requests": count, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


async def main_async(smoke: bool, device: str, sizes: list[int],
                     baseline_requests: int) -> dict[str, object]:
    import torch

    device = "cpu" if smoke else device
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device here; run it on a GPU machine "
              "(python -m benchmarks.gpu), or --smoke to check the script on CPU.")
        sys.exit(2)
    directory = Path(tempfile.mkdtemp(prefix="rinna-gpu-"))
    t0 = time.perf_counter()
    write_random_model(directory, SMOKE_SHAPE if smoke else REAL_SHAPE, device)
    written = time.perf_counter() - t0
    settings = load_settings(model_id=str(directory), quantization="4bit", device=device,
                             database_path=directory / "unused.sqlite3")
    holder: list[BatchEngine] = []

    def factory() -> BatchEngine:
        model, tokenizer, info = load_model(settings)
        holder.append(BatchEngine(model, tokenizer, EngineConfig(max_batch=16,
                                                                  kv_cache_bytes=16 * 1024**3)))
        print(info.describe(), flush=True)
        return holder[0]

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    generator = await LocalGenerator(factory, queue_size=64).start()
    loaded = time.perf_counter() - t1
    weights_gb = torch.cuda.memory_allocated() / 1024**3 if device == "cuda" else float("nan")
    try:
        batches = await run_batches(generator, sizes)
    finally:
        await generator.aclose()
    peak_gb = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else float("nan")
    card = baseline(holder[0], baseline_requests)
    shutil.rmtree(directory, ignore_errors=True)
    name = torch.cuda.get_device_name() if device == "cuda" else (
        "CPU (smoke: small shape)" if smoke else f"CPU ({machine()})")
    return {"device": name, "torch": torch.__version__, "write_s": written, "load_s": loaded,
            "weights_gb": weights_gb, "peak_gb": peak_gb, "batches": batches, "model_card": card}


def report(result: dict[str, object]) -> str:
    batches = result["batches"]
    card = result["model_card"]
    lines = [
        f"GPU benchmark on {result['device']} (torch {result['torch']}): real shape, random "
        f"weights, 4-bit NF4, max_new_tokens={MAX_NEW}.",
        f"weights on GPU {result['weights_gb']:.2f} GiB, peak {result['peak_gb']:.2f} GiB; "
        f"random weights written in {result['write_s']:.0f} s, loaded in {result['load_s']:.0f} s.",
        "| batch | wall | tokens/s | TTFT median |", "|---|---|---|---|",
    ]
    for size, row in batches.items():  # type: ignore[union-attr]
        lines.append(f"| {size} | {row['wall_s']:.1f} s | {row['tokens_per_s']:.0f} | "
                     f"{row['ttft_median_ms']:.0f} ms |")
    lines.append(f"model card one-at-a-time generate, {card['requests']} requests: "  # type: ignore[index]
                 f"{card['tokens_per_s']:.0f} tokens/s ({card['wall_s']:.1f} s)")  # type: ignore[index]
    return "\n".join(lines)


def main() -> None:
    global MAX_NEW
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="small shape on CPU")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batches", default="1,8,16", help="comma-separated batch sizes")
    parser.add_argument("--max-new", type=int, default=MAX_NEW, help="new tokens per request")
    parser.add_argument("--baseline", type=int, default=8, help="requests for the generate baseline")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    MAX_NEW = args.max_new
    sizes = [int(n) for n in args.batches.split(",")]
    result = asyncio.run(main_async(args.smoke, args.device, sizes, args.baseline))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
