"""CPU: which precision should QUANTIZATION=auto pick without a GPU? The real model's shape
(36 layers, hidden 2816, 22 heads, intermediate 11264, vocab 32,000) with random fp16 weights,
loaded through the bot's own loader and engine, one precision per subprocess (so one's memory
is gone before the next starts), never two at a time.

For each of nf4 (quantised at load), bf16, fp32, and nf4-saved (the NF4 model saved quantised,
then loaded as a ready-made checkpoint, like MODEL=ppo-4bit): load time, resident memory after
loading (peak RSS), batch-1 ms/token after the first token, and new tokens/s (prefill included)
with 8 chats at once. Token counts are small on purpose: fp32 needs ~14.4 GB and the 2-core
machine is shared.

    python -m benchmarks.cpu_precision --json build/cpu_precision.json
    python -m benchmarks.cpu_precision --only bf16 --new 4        (one precision, fewer tokens)
    python -m benchmarks.cpu_precision --tiny                     (a small shape: checks the script)
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine
from benchmarks.gpu import REAL_SHAPE, TINY_SHAPE, ids, write_random_model

PRECISIONS = ("nf4", "bf16", "fp32", "nf4-saved")
PROMPT = 32  # tokens per prompt


def measure(precision: str, directory: Path, new: int, chats: int) -> dict:
    """In this process: load `directory` at `precision`, time batch 1 and `chats` at once."""
    import torch

    from benchmarks.gpu import Bench
    from bot.config import load_settings
    from bot.engine.batching import BatchEngine, EngineConfig, Request
    from bot.engine.model_loader import load_model
    from bot.engine.sampling import GenerationParams

    quantization = "auto" if precision == "nf4-saved" else precision
    settings = load_settings(model_id=str(directory), quantization=quantization, device="cpu",
                             database_path=directory / "x.sqlite3")
    started = time.perf_counter()
    model, tokenizer, info = load_model(settings)
    load_s = time.perf_counter() - started
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    engine = BatchEngine(model, tokenizer, EngineConfig(max_batch=chats,
                                                        kv_cache_bytes=1024**3))
    bench = Bench(argparse.Namespace(device="cpu", repeats=1, budget_s=1e9, json=None))
    bench.serve(engine, [(0.0, Request(0, ids(0, 8), GenerationParams(max_new_tokens=2)))])
    request = Request(1, ids(1, PROMPT), GenerationParams(max_new_tokens=new, seed=1))
    times = bench.serve(engine, [(0.0, request)])["tokens"][1]
    burst = [Request(10 + i, ids(10 + i, PROMPT), GenerationParams(max_new_tokens=new, seed=i))
             for i in range(chats)]
    served = bench.serve(engine, [(0.0, r) for r in burst])
    count = sum(len(t) for t in served["tokens"].values())
    result = {"precision": precision, "loaded_as": info.precision.label, "reason": info.reason,
              "load_s": load_s, "weights_gib": info.memory_bytes / 1024**3, "peak_rss_gib": rss_gb,
              "batch1_first_token_s": times[0],
              "batch1_ms_per_token": (times[-1] - times[0]) / max(1, len(times) - 1) * 1000,
              "batch1_tokens": len(times), "chats": chats,
              "chats_tokens_per_s": count / served["wall"], "chats_wall_s": served["wall"],
              "torch_threads": torch.get_num_threads()}
    if precision == "nf4":  # the ready-made checkpoint for the next subprocess
        saved = directory.parent / "nf4-saved"
        model.save_pretrained(saved)
        shutil.copy(directory / "spiece.model", saved / "spiece.model")
        (saved / "generation_config.json").unlink(missing_ok=True)
        result["saved_gib"] = sum(f.stat().st_size for f in saved.iterdir()) / 1024**3
    del engine, model
    gc.collect()
    return result


def run_one(precision: str, root: Path, args: argparse.Namespace) -> dict:
    directory = root / ("nf4-saved" if precision == "nf4-saved" else "fp16")
    command = [sys.executable, "-m", "benchmarks.cpu_precision", "--child", precision,
               "--dir", str(directory), "--new", str(args.new), "--chats", str(args.chats)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"precision": precision, "error": done.stderr.strip().splitlines()[-1:],
                "wall_s": time.perf_counter() - started}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", default=",".join(PRECISIONS))
    parser.add_argument("--new", type=int, default=8, help="new tokens per request")
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":  # its own process, so the parent never holds the weights
        args.dir.mkdir(parents=True, exist_ok=True)
        write_random_model(args.dir, TINY_SHAPE if args.tiny else REAL_SHAPE, "cpu")
        return
    if args.child:
        print(json.dumps(measure(args.child, args.dir, args.new, args.chats)), flush=True)
        return
    root = Path(tempfile.mkdtemp(prefix="rinna-cpu-precision-"))
    results: dict = {"machine": machine(), "shape": "tiny" if args.tiny else "real",
                     "new_tokens": args.new, "prompt_tokens": PROMPT, "runs": []}
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.cpu_precision", "--child", "write",
                        "--dir", str(root / "fp16")] + (["--tiny"] if args.tiny else []),
                       check=True, capture_output=True)
        results["write_s"] = time.perf_counter() - started
        for precision in args.only.split(","):
            results["runs"].append(run_one(precision, root, args))
            print(json.dumps(results["runs"][-1]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
