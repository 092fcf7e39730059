"""GPU: the real model's shape (docs/model.md's config: 36 layers, hidden 2816, 22 heads, vocab
32,000) with random weights, through the bot's own loader and engine, on CUDA.

For each quantisation (bitsandbytes NF4 as shipped, fp16, bitsandbytes 8-bit):
- batch-1 latency per token (and time to first token) on a 64-token prompt;
- throughput (new tokens/s, prefill included) with 1/8/16/32 chats arriving at once, with
  64-token and ~1,500-token prompts, under the default KV budget (KV_CACHE_GB=6) and
  MAX_BATCH=32, with the most rows that ran together;
- staggered arrivals (seeded Poisson, about 8 in flight, one chat in four with a long prompt):
  time to first token and inter-token time, p50 and p99;
- baselines on the same loaded model: the model card's one-at-a-time `generate`, and one static
  `generate` batch (left-padded) of 8 and 32;
- peak GPU memory of every case. Each measurement is the median of `--repeats` runs.
No hub: random fp16 weights are written to a temporary directory and loaded from there.
A time guard (--budget-s) skips what is left once the budget is spent, and every finished case
is written to --json at once, so a run cut short still reports.

    python -m benchmarks.gpu                         (everything; about 6 minutes on an H100)
    python -m benchmarks.gpu --quick                 (NF4 and fp16, fewer cases: ~3 minutes)
    python -m benchmarks.gpu --quant nf4 --prompts 1500 --batches 8,32 --skip staggered
    python -m benchmarks.gpu --tiny --device cpu     (a small shape on CPU: checks the script)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import machine, percentile
from bot.config import load_settings
from bot.engine.batching import BatchEngine, EngineConfig, Request
from bot.engine.model_loader import load_model
from bot.engine.sampling import GenerationParams
from bot.engine.tiny_model import build_tokenizer

REAL_SHAPE = dict(vocab_size=32000, hidden_size=2816, num_hidden_layers=36,
                  num_attention_heads=22, intermediate_size=11264)
TINY_SHAPE = dict(vocab_size=32000, hidden_size=128, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=512)
QUANT = {"nf4": "nf4", "fp16": "fp16", "int8": "int8"}  # QUANTIZATION values
SHORT, LONG = 64, 1500


def write_random_model(directory: Path, shape: dict[str, int], device: str,
                       dtype: str = "float16") -> None:
    import sentencepiece as spm
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**shape, rotary_pct=1.0, use_parallel_residual=False,
                           tie_word_embeddings=False, max_position_embeddings=2048,
                           bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # fp16: half the memory of fp32
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


def ids(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 1000) for _ in range(length)]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.torch = torch
        self.args = args
        self.cuda = args.device == "cuda"
        self.started = time.perf_counter()
        self.results: dict = {"cases": {}, "skipped": []}

    # ----- bookkeeping -----------------------------------------------------------------
    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.args.budget_s

    def record(self, key: str, value: object) -> None:
        self.results["cases"][key] = value
        print(f"[{time.perf_counter() - self.started:5.0f} s] {key}: {json.dumps(value)}",
              flush=True)
        if self.args.json:
            self.args.json.write_text(json.dumps(self.results, indent=2, default=str))

    def case(self, key: str, run: Callable[[], object]) -> None:
        if self.over_budget():
            self.results["skipped"].append(key)
            print(f"skipped (time budget spent): {key}", flush=True)
            return
        self.record(key, run())

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        return self.torch.cuda.max_memory_allocated() / 1024**3 if self.cuda else float("nan")

    # ----- the engine, driven as the generator's worker drives it ----------------------
    def serve(self, engine: BatchEngine, arrivals: list[tuple[float, Request]]) -> dict:
        """Requests join at their arrival times (seconds from now) through `can_admit`, as in
        the generator; returns per request its arrival and the times of its new tokens."""
        pending = sorted(arrivals, key=lambda a: a[0])
        waiting: list[Request] = []
        tokens: dict[int, list[float]] = {r.id: [] for _, r in arrivals}
        arrived = {r.id: t for t, r in arrivals}
        sample = engine._sample
        now = [0.0]
        max_rows = 0

        def spy(logits, indices):  # type: ignore[no-untyped-def]
            rids = [engine.rows[i].request.id for i in indices]
            out = sample(logits, indices)
            at = time.perf_counter() - start
            for rid in rids:
                tokens[rid].append(at)
            return out

        engine._sample = spy  # type: ignore[method-assign]
        start = time.perf_counter()
        try:
            while pending or waiting or engine.has_work():
                now[0] = time.perf_counter() - start
                while pending and pending[0][0] <= now[0]:
                    waiting.append(pending.pop(0)[1])
                if not waiting and not engine.has_work():
                    time.sleep(max(0.0, pending[0][0] - now[0]))
                    continue
                admitted: list[Request] = []
                while waiting and engine.can_admit(admitted, waiting[0]):
                    admitted.append(waiting.pop(0))
                engine.add_requests(admitted)
                engine.step()
                max_rows = max(max_rows, len(engine.rows))
        finally:
            engine._sample = sample  # type: ignore[method-assign]
        self.sync()
        return {"wall": time.perf_counter() - start, "arrived": arrived, "tokens": tokens,
                "max_rows": max_rows}

    def burst(self, engine: BatchEngine, batch: int, prompt: int, max_new: int) -> dict:
        params = GenerationParams(max_new_tokens=max_new, seed=1)
        runs = []
        for repeat in range(self.args.repeats):
            self.reset_peak()
            requests = [Request(i, ids(1000 * repeat + i, prompt), params) for i in range(batch)]
            served = self.serve(engine, [(0.0, r) for r in requests])
            count = sum(len(t) for t in served["tokens"].values())
            firsts = [t[0] for t in served["tokens"].values() if t]
            runs.append({"tokens_per_s": count / served["wall"], "wall_s": served["wall"],
                         "ttft_p50_s": percentile(firsts, 50), "max_rows": served["max_rows"],
                         "peak_gb": self.peak_gb()})
        return median_run(runs)

    def latency(self, engine: BatchEngine, max_new: int) -> dict:
        runs = []
        for repeat in range(self.args.repeats):
            self.reset_peak()
            request = Request(0, ids(77 + repeat, SHORT), GenerationParams(max_new_tokens=max_new,
                                                                          seed=repeat))
            times = self.serve(engine, [(0.0, request)])["tokens"][0]
            runs.append({"ms_per_token": (times[-1] - times[0]) / (len(times) - 1) * 1000,
                         "ttft_ms": times[0] * 1000, "tokens": len(times),
                         "peak_gb": self.peak_gb()})
        return median_run(runs)

    def staggered(self, engine: BatchEngine, per_chat_s: float, chats: int, max_new: int) -> dict:
        """Poisson arrivals at a rate that keeps about 8 chats in flight."""
        rng = random.Random(7)
        rate = 8 / per_chat_s
        at, arrivals = 0.0, []
        for i in range(chats):
            at += rng.expovariate(rate)
            length = LONG if i % 4 == 3 else SHORT
            arrivals.append((at, Request(i, ids(500 + i, length),
                                         GenerationParams(max_new_tokens=max_new, seed=i))))
        self.reset_peak()
        served = self.serve(engine, arrivals)
        firsts = [t[0] - served["arrived"][rid] for rid, t in served["tokens"].items() if t]
        gaps = [b - a for t in served["tokens"].values() for a, b in zip(t, t[1:], strict=False)]
        long_firsts = [served["tokens"][r.id][0] - t for t, r in arrivals
                       if len(r.prompt_ids) == LONG and served["tokens"][r.id]]
        return {"chats": chats, "rate_per_s": rate, "ttft_p50_ms": percentile(firsts, 50) * 1000,
                "ttft_p99_ms": percentile(firsts, 99) * 1000,
                "ttft_long_p50_ms": percentile(long_firsts, 50) * 1000,
                "itl_p50_ms": percentile(gaps, 50) * 1000, "itl_p99_ms": percentile(gaps, 99) * 1000,
                "max_rows": served["max_rows"], "wall_s": served["wall"], "peak_gb": self.peak_gb()}

    # ----- baselines: transformers' generate on the same model --------------------------
    def generate(self, engine: BatchEngine, batch: int, prompt: int, max_new: int) -> dict:
        torch = self.torch
        model, tok = engine.model, engine.tokenizer
        runs = []
        for repeat in range(self.args.repeats):
            self.reset_peak()
            prompts = [ids(2000 * repeat + i, prompt) for i in range(batch)]
            tensor = torch.tensor(prompts, device=engine.device)  # same length: no padding
            torch.manual_seed(repeat)
            started = time.perf_counter()
            with torch.no_grad():
                out = model.generate(tensor, attention_mask=torch.ones_like(tensor),
                                     do_sample=True, max_new_tokens=max_new, temperature=0.7,
                                     repetition_penalty=1.1, pad_token_id=tok.pad_id,
                                     bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
            self.sync()
            wall = time.perf_counter() - started
            new = out[:, prompt:]
            ended = (new == tok.eos_id).cumsum(dim=1) > 0  # after a row's eos: padding
            runs.append({"tokens_per_s": int((~ended).sum()) / wall, "wall_s": wall,
                         "peak_gb": self.peak_gb()})
        return median_run(runs)

    def one_at_a_time(self, engine: BatchEngine, prompt: int, max_new: int) -> dict:
        """The model card's way, one request at a time: its rate does not depend on how many
        wait, so `--repeats` single requests measure it."""
        return self.generate(engine, 1, prompt, max_new)

    # ----- the plan ----------------------------------------------------------------------
    def run_quant(self, name: str, directory: Path, quick: bool) -> None:
        torch = self.torch
        if self.over_budget():
            self.results["skipped"].append(name)
            return
        settings = load_settings(model_id=str(directory), quantization=QUANT[name],
                                 device=self.args.device, database_path=directory / "x.sqlite3")
        self.reset_peak()
        loaded = time.perf_counter()
        model, tokenizer, info = load_model(settings)
        engine = BatchEngine(model, tokenizer, EngineConfig(
            max_batch=32, kv_cache_bytes=int(self.args.kv_gb * 1024**3),
            attention=self.args.attention))
        self.record(f"{name} load", {"seconds": time.perf_counter() - loaded,
                                     "weights_gb": info.memory_bytes / 1024**3,
                                     "attention": "flash varlen" if engine.flash else "per-row SDPA",
                                     "kv_budget_tokens": engine.cache.max_tokens})
        max_new = self.args.max_new
        self.serve(engine, [(0.0, Request(0, ids(0, SHORT), GenerationParams(max_new_tokens=8)))])
        self.case(f"{name} batch-1 latency", lambda: self.latency(engine, max_new))
        int8 = name == "int8"
        batches = [b for b in self.args.batch_list if not (int8 or quick) or b in (1, 8, 32)]
        prompts = [p for p in self.args.prompt_list if not int8 or p == SHORT]
        for prompt in prompts:
            for batch in batches:
                self.case(f"{name} burst {batch}x{prompt}",
                          lambda b=batch, p=prompt: self.burst(engine, b, p, max_new))
        if "staggered" not in self.args.skip and not int8:
            key = f"{name} burst 8x{SHORT}"
            per_chat = self.results["cases"].get(key, {}).get("wall_s") or max_new * 0.05
            self.case(f"{name} staggered",
                      lambda: self.staggered(engine, per_chat, 16 if quick else 32, max_new))
        if "baselines" not in self.args.skip and not int8:
            for prompt in prompts:
                self.case(f"{name} card one-at-a-time {prompt}",
                          lambda p=prompt: self.one_at_a_time(engine, p, max_new))
                for batch in ([8] if quick or prompt == LONG else [8, 32]):
                    self.case(f"{name} static generate {batch}x{prompt}",
                              lambda b=batch, p=prompt: self.generate(engine, b, p, max_new))
        del engine, model
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def run(self) -> dict:
        torch = self.torch
        args = self.args
        if self.cuda and not torch.cuda.is_available():
            print("benchmarks.gpu: no CUDA device here; run it on a GPU machine, or "
                  "--tiny --device cpu to check the script.")
            sys.exit(2)
        device_name = torch.cuda.get_device_name() if self.cuda else f"CPU ({machine()})"
        self.results.update({"device": device_name, "torch": torch.__version__,
                             "shape": "tiny" if args.tiny else "real", "args": vars(args)})
        directory = Path(tempfile.mkdtemp(prefix="rinna-gpu-"))
        try:
            t0 = time.perf_counter()
            write_random_model(directory, TINY_SHAPE if args.tiny else REAL_SHAPE, args.device)
            self.record("write random weights", {"seconds": time.perf_counter() - t0})
            for name in args.quant_list:
                self.run_quant(name, directory, args.quick)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        self.results["total_s"] = time.perf_counter() - self.started
        if args.json:
            args.json.write_text(json.dumps(self.results, indent=2, default=str))
        return self.results


def median_run(runs: list[dict]) -> dict:
    """Each number the median over the runs (peak memory: the largest)."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = max(values) if key.startswith("peak") else statistics.median(values)
    out["runs"] = len(runs)
    return out


def report(results: dict) -> str:
    cases = results["cases"]
    lines = [f"GPU benchmark on {results['device']} (torch {results['torch']}), "
             f"{results['shape']} shape, random weights, max_new_tokens="
             f"{results['args']['max_new']}, KV_CACHE_GB={results['args']['kv_gb']}, MAX_BATCH=32;"
             f" medians of {results['args']['repeats']} runs; total {results.get('total_s', 0):.0f} s.",
             ""]
    for name in results["args"]["quant_list"]:
        if f"{name} load" not in cases:
            continue
        load = cases[f"{name} load"]
        lines.append(f"**{name}**: weights {load['weights_gb']:.2f} GiB, loaded in "
                     f"{load['seconds']:.0f} s, attention {load['attention']}.")
        if (lat := cases.get(f"{name} batch-1 latency")):
            lines.append(f"batch 1: {lat['ms_per_token']:.1f} ms/token, first token "
                         f"{lat['ttft_ms']:.0f} ms, peak {lat['peak_gb']:.2f} GiB")
        lines += ["", "| chats x prompt | tokens/s | wall | TTFT p50 | most rows together | peak GiB |",
                  "|---|---|---|---|---|---|"]
        for key, row in cases.items():
            if key.startswith(f"{name} burst "):
                lines.append(f"| {key.removeprefix(name + ' burst ')} | {row['tokens_per_s']:.0f} |"
                             f" {row['wall_s']:.1f} s | {row['ttft_p50_s'] * 1000:.0f} ms | "
                             f"{row['max_rows']:.0f} | {row['peak_gb']:.2f} |")
        for key, row in cases.items():
            if key.startswith((f"{name} card", f"{name} static")):
                lines.append(f"| {key.removeprefix(name + ' ')} (generate) | "
                             f"{row['tokens_per_s']:.0f} | {row['wall_s']:.1f} s | | | "
                             f"{row['peak_gb']:.2f} |")
        if (st := cases.get(f"{name} staggered")):
            lines.append(f"\nstaggered ({st['chats']} chats, {st['rate_per_s']:.2f}/s, 1 in 4 long):"
                         f" TTFT p50 {st['ttft_p50_ms']:.0f} ms, p99 {st['ttft_p99_ms']:.0f} ms "
                         f"(long prompts p50 {st['ttft_long_p50_ms']:.0f} ms); inter-token p50 "
                         f"{st['itl_p50_ms']:.0f} ms, p99 {st['itl_p99_ms']:.0f} ms; up to "
                         f"{st['max_rows']} rows; peak {st['peak_gb']:.2f} GiB")
        lines.append("")
    if results["skipped"]:
        lines.append(f"skipped for time: {', '.join(results['skipped'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a small shape (to check the script)")
    parser.add_argument("--quick", action="store_true", help="NF4 and fp16, fewer cases")
    parser.add_argument("--quant", default=None, help="comma-separated: nf4,fp16,int8")
    parser.add_argument("--batches", default="1,8,16,32")
    parser.add_argument("--prompts", default=f"{SHORT},{LONG}")
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-gb", type=float, default=6.0, help="KV_CACHE_GB (default 6)")
    parser.add_argument("--attention", default="auto", choices=["auto", "rows", "flash"],
                        help="the engine's attention: flash varlen (CUDA), per-row SDPA, or auto")
    parser.add_argument("--skip", default="", help="comma-separated: staggered,baselines")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="skip the cases left after this many seconds")
    parser.add_argument("--json", type=Path, help="write the raw numbers here (as they come)")
    args = parser.parse_args()
    args.quant_list = (args.quant or ("nf4,fp16" if args.quick else "nf4,fp16,int8")).split(",")
    args.batch_list = [int(n) for n in args.batches.split(",")]
    args.prompt_list = [int(n) for n in args.prompts.split(",")]
    args.skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        args.repeats = min(args.repeats, 2)
    results = Bench(args).run()
    print(report(results))


if __name__ == "__main__":
    main()
