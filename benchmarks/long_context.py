"""Long contexts on CPU: the engine before issue 11 (DynamicCache, left padding, whole prefill)
against the current one (KV arena, packed chunked prefill, per-row attention), same run.

A bigger random stand-in than the test model (6 layers, hidden 1,024, 16 heads, vocab 32,000,
fp32, one torch thread) so that attention and the cache weigh what they would on a real model.
Each case runs in its own process (peak resident memory per case, no thread interference).

    python -m benchmarks.long_context                      (every case; 20-30 min on 2 busy cores)
    python -m benchmarks.long_context --cases steps,stall  (a subset)

Cases: `short32` (32 chats with ~30-token prompts: no regression where batching already
paid), `steps` (decode step time at 8x64, 32x64, 8x1500, 32x1500 with forward / cache /
sampling), `throughput8` and `throughput32` (~1,500-token prompts, against the model card's
one-at-a-time `generate`), `ttft` (1 long + 7 short arriving together, short chats' first
token against alone), `stall` (8 streams decoding when a long prompt arrives).
The old engine is `git show BASELINE:bot/engine.py` loaded as a module (--baseline-rev).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, median  # noqa: E402

BASELINE_REV = "df7793b"  # main before issue 11
SHAPE = dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=6, num_attention_heads=16,
             intermediate_size=4096)
LONG = 1500
SHORT = 30
MAX_NEW = 64
ROOT = Path(__file__).resolve().parent.parent


# ----- set-up -----------------------------------------------------------------------------
def write_model(directory: Path) -> None:
    from benchmarks.gpu import write_random_model

    write_random_model(directory, SHAPE, "cpu", dtype="float32")


def load_engine_class(kind: str, rev: str):  # noqa: ANN201
    if kind == "new":
        from bot.engine.batching import BatchEngine, EngineConfig, Request
        return BatchEngine, EngineConfig, Request
    source = subprocess.run(["git", "show", f"{rev}:bot/engine.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="old-engine-")) / "old_engine.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_engine", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_engine"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.BatchEngine, module.EngineConfig, module.Request


def ids(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 1000) for _ in range(length)]


# ----- one case, in a worker process ------------------------------------------------------
def worker(case: str, kind: str, model_dir: Path, rev: str) -> dict[str, object]:
    import torch

    from bot.config import load_settings
    from bot.engine.generation import GenerationParams
    from bot.engine.model_loader import load_model

    torch.set_num_threads(1)
    settings = load_settings(model_id=str(model_dir), quantization="fp32", device="cpu",
                             database_path=model_dir / "unused.sqlite3")
    model, tokenizer, _ = load_model(settings)
    if kind == "card":
        return card(model, tokenizer, 2)
    Engine, Config, Request = load_engine_class(kind, rev)
    engine = Engine(model, tokenizer, Config(max_batch=32))
    params = GenerationParams(max_new_tokens=MAX_NEW, seed=1)
    if case.startswith("steps"):
        batch, length = (int(n) for n in case.removeprefix("steps").split("x"))
        return steps(engine, kind, Request, batch, length)
    if case.startswith("throughput"):
        n = int(case.removeprefix("throughput"))
        requests = [Request(i, ids(i, LONG + i), params) for i in range(n)]
        started = time.perf_counter()
        drive(engine, {0: requests})
        wall = time.perf_counter() - started
        return {"wall_s": wall, "tokens": engine.tokens_generated,
                "tokens_per_s": engine.tokens_generated / wall}
    if case == "short32":  # short chats, where batching already paid off: no regression
        requests = [Request(i, ids(i, SHORT + i), params) for i in range(32)]
        started = time.perf_counter()
        drive(engine, {0: requests})
        wall = time.perf_counter() - started
        return {"wall_s": wall, "tokens": engine.tokens_generated,
                "tokens_per_s": engine.tokens_generated / wall}
    if case == "ttft":
        long = Request(0, ids(0, LONG), params)
        short = [Request(i, ids(i, SHORT + i), params) for i in range(1, 8)]
        alone = drive(Engine(model, tokenizer, Config(max_batch=32)), {0: short[:1]})
        together = drive(engine, {0: [long, *short]})
        return {"short_alone_s": alone[1][0],
                "short_together_median_s": median([together[r.id][0] for r in short]),
                "long_first_s": together[0][0]}
    if case == "stall":
        running = [Request(i, ids(i, SHORT + i), GenerationParams(max_new_tokens=60, seed=i))
                   for i in range(8)]
        long = Request(99, ids(99, LONG), params)
        times = drive(engine, {0: running, 12: [long]}, stop_after_first=99)
        arrival = times["arrival"][0]
        gaps_before, gaps_after = [], []
        for r in running:
            t = times[r.id]
            for a, b in zip(t, t[1:], strict=False):
                (gaps_after if b > arrival else gaps_before).append(b - a)
        return {"gap_before_median_s": median(gaps_before), "stall_s": max(gaps_after),
                "gap_after_median_s": median(gaps_after),
                "long_first_token_s": times[99][0] - arrival}
    raise SystemExit(f"unknown case {case}")


def drive(engine, arrivals: dict, stop_after_first: int | None = None) -> dict:  # noqa: ANN001
    """The generator's loop without its thread: arrivals join at their step; returns for each
    request the times (from the start) at which it produced text."""
    times: dict = {}
    waiting: list = []
    started = time.perf_counter()
    step = 0
    while step <= max(arrivals) or waiting or engine.has_work():
        if step in arrivals:
            times["arrival"] = [time.perf_counter() - started]
            waiting += arrivals[step]
        admitted: list = []
        while waiting and engine.can_admit(admitted, waiting[0]):  # as the generator admits
            admitted.append(waiting.pop(0))
        outputs = engine.add_requests(admitted) or []  # (an older revision's returned [])
        outputs += engine.step()
        now = time.perf_counter() - started
        for out in outputs:
            times.setdefault(out.request_id, []).append(now)
        step += 1
        if stop_after_first is not None and stop_after_first in times:
            break
    return times


def steps(engine, kind: str, Request, batch: int, length: int) -> dict:  # noqa: ANN001, N803
    """Decode steps of `batch` rows with `length` cached tokens each (the cache filled with
    random values instead of a prefill, which the step's cost does not depend on)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bot.engine.generation import GenerationParams

    params = GenerationParams(max_new_tokens=500, seed=1)
    requests = [Request(i, ids(i, length), params) for i in range(batch)]
    cfg = engine.model.config
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    if kind == "new":
        engine.add_requests(requests)
        for layer in range(cfg.num_hidden_layers):
            engine.cache.keys[layer].normal_()
            engine.cache.values[layer].normal_()
        for row in engine.rows:
            row.length, row.last = length, 5
    else:
        from transformers import DynamicCache

        engine.rows = [engine._new_row(r) for r in requests]
        for row in engine.rows:
            row.last = 5
        cache = DynamicCache()
        for layer in range(cfg.num_hidden_layers):
            cache.update(torch.randn(batch, heads, length, head_dim),
                         torch.randn(batch, heads, length, head_dim), layer)
        engine.cache = cache
        engine.mask = torch.ones(batch, length, dtype=torch.long)
        engine.seen = torch.zeros(batch, cfg.vocab_size, dtype=torch.bool)
    sample_time = [0.0]
    sample = engine._sample

    def timed_sample(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        result = sample(*args, **kwargs)
        sample_time[0] += time.perf_counter() - t0
        return result

    engine._sample = timed_sample
    engine.step()  # warm-up
    sample_time[0] = 0.0
    count = 5 if batch * length < 20000 else 3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(count):
            engine.step()
        wall = (time.perf_counter() - started) / count
    cache_ops = {"aten::cat", "aten::index_copy_"} if kind == "old" else {"aten::index_copy_"}
    cache_s = sum(e.self_cpu_time_total for e in prof.key_averages()
                  if e.key in cache_ops) / 1e6 / count
    sampling = sample_time[0] / count
    return {"step_s": wall, "cache_s": cache_s, "sampling_s": sampling,
            "forward_s": wall - cache_s - sampling}


def card(model, tokenizer, count: int) -> dict:  # noqa: ANN001
    """The model card's one-at-a-time generate on ~1,500-token prompts: its rate in tokens/s
    does not depend on how many chats wait, so two requests measure it."""
    import torch

    torch.manual_seed(0)
    tokens, started = 0, time.perf_counter()
    for i in range(count):
        prompt = torch.tensor([ids(i, LONG + i)])
        with torch.no_grad():
            out = model.generate(prompt, do_sample=True, max_new_tokens=MAX_NEW,
                                 min_new_tokens=MAX_NEW,
                                 temperature=0.7, repetition_penalty=1.1,
                                 pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id)
        tokens += out.shape[1] - prompt.shape[1]
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "per_request_s": wall / count}


# ----- driver -----------------------------------------------------------------------------
def run_case(case: str, kind: str, model_dir: Path, rev: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.long_context", "--worker", case, kind,
               "--model-dir", str(model_dir), "--baseline-rev", rev]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{case} {kind} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["case_wall_s"] = time.perf_counter() - started
    print(f"  {case:>14} {kind:>4}: {json.dumps(result)}", flush=True)
    return result


def report(results: dict) -> str:
    lines = [f"Long contexts, stand-in {SHAPE['num_hidden_layers']} layers / hidden "
             f"{SHAPE['hidden_size']} / vocab {SHAPE['vocab_size']}, fp32, 1 torch thread, "
             f"max_new_tokens={MAX_NEW}. Machine: {machine()}", ""]
    mem = lambda r: f"{r['peak_rss_gb']:.2f} GB"  # noqa: E731
    if any(k.startswith("steps") for k in results):
        lines += ["| decode step | before | after | before: cache / sampling | after: cache / "
                  "sampling | peak RSS before / after |", "|---|---|---|---|---|---|"]
        for case in ("steps8x64", "steps32x64", "steps8x1500", "steps32x1500"):
            if case in results:
                o, n = results[case]["old"], results[case]["new"]
                lines.append(
                    f"| {case.removeprefix('steps')} | {o['step_s'] * 1000:.0f} ms | "
                    f"**{n['step_s'] * 1000:.0f} ms** | {o['cache_s'] * 1000:.0f} / "
                    f"{o['sampling_s'] * 1000:.1f} ms | {n['cache_s'] * 1000:.1f} / "
                    f"{n['sampling_s'] * 1000:.1f} ms | {mem(o)} / {mem(n)} |")
        lines.append("")
    for n in (8, 32):
        case = f"throughput{n}"
        if case in results:
            r, c = results[case], results.get("card")
            row = f"{n} chats, ~{LONG}-token prompts: "
            for kind in ("old", "new"):
                if kind in r:
                    x = r[kind]
                    vs = f", {x['tokens_per_s'] / c['tokens_per_s']:.1f}x the card" if c else ""
                    row += (f"{'before' if kind == 'old' else 'after'} {x['wall_s']:.0f} s, "
                            f"{x['tokens_per_s']:.2f} tok/s{vs}, peak {mem(x)}; ")
            lines.append(row)
    if "short32" in results:
        r = results["short32"]
        lines.append(f"32 chats, ~{SHORT}-token prompts:"
                     f" before {r['old']['tokens_per_s']:.1f} tok/s,"
                     f" after {r['new']['tokens_per_s']:.1f} tok/s")
    if "card" in results:
        c = results["card"]
        lines.append(f"model card one-at-a-time: {c['tokens_per_s']:.2f} tok/s "
                     f"({c['per_request_s']:.1f} s per request), peak {mem(c)}")
    if "ttft" in results:
        for kind, x in results["ttft"].items():
            lines.append(f"1 long + 7 short together, {'before' if kind == 'old' else 'after'}: "
                         f"short first token {x['short_together_median_s']:.1f} s (alone "
                         f"{x['short_alone_s']:.2f} s), long first token {x['long_first_s']:.1f} s"
                         f", peak {mem(x)}")
    if "stall" in results:
        for kind, x in results["stall"].items():
            when = "before" if kind == "old" else "after"
            lines.append(f"8 streams, a long prompt arrives, {when}:"
                         f" stall {x['stall_s']:.2f} s,"
                         f" token gap {x['gap_before_median_s'] * 1000:.0f}"
                         f" ms before / {x['gap_after_median_s'] * 1000:.0f} ms after (median), "
                         f"long's first token {x['long_first_token_s']:.1f} s, peak {mem(x)}")
    return "\n".join(lines)


CASES = ["steps8x64", "steps32x64", "steps8x1500", "steps32x1500", "stall", "ttft",
         "throughput8", "throughput32", "short32"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="steps,stall,ttft,throughput8,throughput32,short32")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "ENGINE"))
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker[0], args.worker[1], args.model_dir, args.baseline_rev)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(json.dumps(result))
        return
    wanted = [c for c in CASES if any(c.startswith(w) for w in args.cases.split(","))]
    model_dir = Path(tempfile.mkdtemp(prefix="rinna-long-"))
    write_model(model_dir)
    results: dict = {}
    print(f"machine: {machine()}", flush=True)
    for case in wanted:
        results[case] = {kind: run_case(case, kind, model_dir, args.baseline_rev)
                         for kind in ("old", "new")}
        if case.startswith("throughput") and "card" not in results:
            results["card"] = run_case("card", "card", model_dir, args.baseline_rev)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
