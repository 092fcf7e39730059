"""GPU, eager vs captured decode side by side (issue 30): the real model's shape with random
weights, NF4 and fp16 both loaded once, and for each two engines on the same loaded model:
one with CUDA_GRAPHS=false (eager, what the bot did before) and one with the captured decode.

Cases run in order of importance while `--budget-s` lasts (default: about 5 minutes on an H100
including writing and loading the weights); each finished case is written to --json at once:

 1. batch 1 on a 64-token prompt, ms per token (NF4, then fp16);
 2. 32 short chats (64-token prompts) arriving together, tokens/s (NF4, fp16);
 3. 8 and 16 short chats, 1 chat, then 8 long chats (1,500-token prompts);
 4. staggered arrivals (seeded Poisson, ~8 in flight, one in four long): TTFT and
    inter-token p50/p99;
 5. a profile of 16 captured decode steps at batch 1 (NF4): the top CUDA kernels and CPU ops,
    to show where the time goes.
Targets (issue 30): batch 1 fp16 <= 3 ms/token, NF4 <= 4; 32 short chats fp16 >= 6,000
tokens/s, NF4 >= 4,000; TTFT and inter-token p99 no worse than eager.

    python -m benchmarks.gpu_graphs --json gpu-graphs.json          (on a CUDA machine)
    python -m benchmarks.gpu_graphs --device cpu --tiny --budget-s 120   (checks the script:
        on the CPU "captured" is the runner without capture, so the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import machine
from benchmarks.gpu import LONG, REAL_SHAPE, SHORT, TINY_SHAPE, Bench, ids, write_random_model
from bot.config import load_settings
from bot.engine.batching import BatchEngine, EngineConfig, Request
from bot.engine.generation import GenerationParams
from bot.engine.model_loader import load_model

MODES = ("eager", "graphs")


class GraphsBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.engines: dict[tuple[str, str], BatchEngine] = {}

    def load(self, quant: str, directory: Path) -> None:
        settings = load_settings(model_id=str(directory), quantization=quant,
                                 device=self.args.device, database_path=directory / "x.sqlite3")
        started = time.perf_counter()
        model, tokenizer, info = load_model(settings)
        loaded = time.perf_counter() - started
        captured = "auto" if self.cuda else "runner"  # CPU: the runner, nothing captured
        for mode in MODES:
            built = time.perf_counter()
            engine = BatchEngine(model, tokenizer, EngineConfig(
                max_batch=32, kv_cache_bytes=int(self.args.kv_gb * 1024**3),
                decode=captured if mode == "graphs" else "eager"))
            self.engines[quant, mode] = engine
            # warm-up: kernels, the arena's first size, and every bucket's first replay
            self.serve(engine, [(0.0, Request(0, ids(0, SHORT), GenerationParams(
                max_new_tokens=8)))])
            self.record(f"{quant} {mode} load", {
                "load_s": loaded, "engine_s": time.perf_counter() - built,
                "weights_gb": info.memory_bytes / 1024**3,
                "attention": "flash varlen" if engine.flash else "per-row SDPA",
                "decode": engine.decode_report.describe(),
                "graph_bytes": engine.decode_report.bytes,
                "capture_s": engine.decode_report.seconds})

    def ranked(self) -> list[tuple[str, Callable[[BatchEngine], object]]]:
        new = self.args.max_new
        cases: list[tuple[str, Callable[[BatchEngine], object]]] = []
        for quant in self.args.quant_list:
            cases.append((f"{quant} batch-1 latency", lambda e: self.latency(e, new)))
        for quant in self.args.quant_list:
            cases.append((f"{quant} burst 32x{SHORT}", lambda e: self.burst(e, 32, SHORT, new)))
        for batch in (8, 16, 1):
            for quant in self.args.quant_list:
                cases.append((f"{quant} burst {batch}x{SHORT}",
                              lambda e, b=batch: self.burst(e, b, SHORT, new)))
        for quant in self.args.quant_list:
            cases.append((f"{quant} burst 8x{LONG}", lambda e: self.burst(e, 8, LONG, new)))
        for quant in self.args.quant_list:  # both modes at the rate of eager's 8 short chats
            cases.append((f"{quant} staggered", lambda e, q=quant: self.staggered(
                e, self.results["cases"].get(f"{q} burst 8x{SHORT} eager", {}).get("wall_s")
                or new * 0.03, 24, new)))
        return cases

    def side_by_side(self, name: str, run: Callable[[BatchEngine], object]) -> None:
        """Both modes or neither: the budget is checked once for the pair."""
        quant = name.split(" ", 1)[0]
        over = self.over_budget()
        for mode in MODES:
            engine = self.engines.get((quant, mode))
            if engine is None:
                continue
            if over:
                self.results["skipped"].append(f"{name} {mode}")
            else:
                self.record(f"{name} {mode}", run(engine))

    def profile(self, mode: str) -> dict:
        """16 decode steps at batch 1 (NF4, else the first precision loaded) under the
        profiler: the top kernels and ops, written beside the JSON too."""
        from torch.profiler import ProfilerActivity, profile

        quant = "nf4" if ("nf4", mode) in self.engines else self.args.quant_list[0]
        engine = self.engines[quant, mode]
        engine.add_requests([Request(99, ids(99, SHORT), GenerationParams(max_new_tokens=40))])
        while any(r.prefilling for r in engine.rows):
            engine.step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(16):
                if engine.has_work():
                    engine.step()
            self.sync()
        engine._keep([])
        sort = "cuda_time_total" if self.cuda else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=20)
        if self.args.json:
            self.args.json.with_suffix(f".profile-{mode}.txt").write_text(table)
        return {"quant": quant, "steps": 16, "top": table.splitlines()[:26]}

    def run(self) -> dict:
        torch = self.torch
        args = self.args
        if self.cuda and not torch.cuda.is_available():
            print("benchmarks.gpu_graphs: no CUDA device here; --device cpu --tiny checks it.")
            sys.exit(2)
        import bitsandbytes
        import transformers

        self.results.update({
            "device": torch.cuda.get_device_name() if self.cuda else f"CPU ({machine()})",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bitsandbytes.__version__, "date": time.strftime("%Y-%m-%d"),
            "shape": "tiny" if args.tiny else "real", "args": vars(args)})
        directory = args.weights or Path(tempfile.mkdtemp(prefix="rinna-graphs-"))
        try:
            t0 = time.perf_counter()
            if not (directory / "config.json").is_file():  # --weights: written once, reused
                directory.mkdir(parents=True, exist_ok=True)
                write_random_model(directory, TINY_SHAPE if args.tiny else REAL_SHAPE,
                                   args.device)
            self.record("write random weights", {"seconds": time.perf_counter() - t0})
            for quant in args.quant_list:
                self.load(quant, directory)
            for name, run in self.ranked():
                self.side_by_side(name, run)
            if "profile" not in args.skip:
                for mode in MODES:
                    self.case(f"profile {mode}", lambda m=mode: self.profile(m))
        finally:
            if args.weights is None:
                shutil.rmtree(directory, ignore_errors=True)
            self.engines.clear()
            gc.collect()
        self.results["total_s"] = time.perf_counter() - self.started
        if args.json:
            args.json.write_text(json.dumps(self.results, indent=2, default=str))
        return self.results


def report(results: dict) -> str:
    cases = results["cases"]
    lines = [f"eager vs captured decode on {results['device']} (torch {results['torch']}, "
             f"transformers {results['transformers']}, bitsandbytes {results['bitsandbytes']}), "
             f"{results['shape']} shape, random weights, max_new_tokens="
             f"{results['args']['max_new']}, {results['date']}; total "
             f"{results.get('total_s', 0):.0f} s.", ""]
    for key, row in cases.items():
        if key.endswith(" graphs load"):
            lines.append(f"{key.removesuffix(' graphs load')}: {row['decode']}")
    lines += ["", "| case | eager | captured | captured / eager |", "|---|---|---|---|"]
    for key, eager in cases.items():
        if not key.endswith(" eager") or key.endswith("load eager"):
            continue
        name = key.removesuffix(" eager")
        graphs = cases.get(f"{name} graphs")
        for metric, unit in (("ms_per_token", "ms/token"), ("tokens_per_s", "tokens/s"),
                             ("ttft_p99_ms", "ms TTFT p99"), ("itl_p99_ms", "ms inter-token p99")):
            if metric in eager:
                after = f"{graphs[metric]:.1f}" if graphs else "not run"
                ratio = f"{graphs[metric] / eager[metric]:.2f}x" if graphs else ""
                lines.append(f"| {name} | {eager[metric]:.1f} {unit} | {after} | {ratio} |")
    if results["skipped"]:
        lines.append(f"\nskipped for time: {', '.join(results['skipped'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a small shape (to check the script)")
    parser.add_argument("--quant", default="nf4,fp16", help="comma-separated: nf4,fp16")
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kv-gb", type=float, default=6.0, help="KV_CACHE_GB (default 6)")
    parser.add_argument("--skip", default="", help="comma-separated: profile")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no case after this many seconds (default: ~5 min in all)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here (as they come)")
    parser.add_argument("--weights", type=Path, help="a folder for the random weights, kept: "
                        "written if it holds none, else reused (the GPU test's, say)")
    args = parser.parse_args()
    args.quant_list = args.quant.split(",")
    args.skip = set(filter(None, args.skip.split(",")))
    args.attention = "auto"
    results = GraphsBench(args).run()
    print(report(results))


if __name__ == "__main__":
    main()
