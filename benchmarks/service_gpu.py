"""Service checks on a GPU (issue 13), printed for benchmarks/RESULTS.md:

- `rinna-bot doctor` with DEVICE=cuda:0 (4-bit) and DEVICE=auto (8-bit): the CUDA line with
  free memory, bitsandbytes quantizing and running on the GPU;
- DEVICE=cuda:N one past the last GPU: refused with a fix;
- load with DEVICE=auto on a GPU machine: no CPU warning; per-request time to first token and
  answer time after a cold start, without and with the warm-up, in fresh processes.

Tiny model, no network: `HF_HUB_OFFLINE=1 python -m benchmarks.service_gpu`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bot.engine.tiny_model import build_tiny_model

CHILD = r'''
import asyncio, io, logging, sys, time
from bot.service.assembly import warm_up
from bot.config import load_settings
from bot.engine.generator import load_generator
from bot.service.metrics import MeteredGenerator, Metrics

log = io.StringIO()
logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stderr),
                                                  logging.StreamHandler(log)])

async def main(mode: str, model: str) -> None:
    settings = load_settings(model_id=model, device="auto", quantization="4bit",
                             max_new_tokens=32)
    generator = await load_generator(settings)
    if mode == "warm":
        await warm_up(generator)
    metrics = Metrics()
    metrics.watch_generator(generator)
    metered = MeteredGenerator(generator, metrics)
    times = []
    for _ in range(3):
        started, first = time.monotonic(), None
        async for _delta in metered.stream("ユーザー: こんにちは<NL>システム: "):
            first = first or time.monotonic() - started
        times.append((round(first or -1, 4), round(time.monotonic() - started, 4)))
    await generator.aclose()
    print(mode, "(time to first token s, answer s) x3:", times)
    print("CPU warnings:", log.getvalue().count("found no CUDA device"))

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''


def main() -> None:
    tiny = build_tiny_model(Path("/tmp/rinna-service-gpu"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
    env.update(MODEL_ID=str(tiny), DATABASE_PATH="/tmp/rinna-service-gpu.sqlite3",
               HF_HUB_OFFLINE="1", SLACK_BOT_TOKEN="xoxb-x", SLACK_APP_TOKEN="xapp-x")
    import torch

    gpus = torch.cuda.device_count()
    for extra in ({"DEVICE": "cuda:0", "QUANTIZATION": "4bit"},
                  {"DEVICE": "auto", "QUANTIZATION": "8bit"},
                  {"DEVICE": f"cuda:{gpus}", "QUANTIZATION": "4bit"}):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "bot.service.cli", "doctor"], env={**env, **extra},
                              capture_output=True, text=True, timeout=300, check=False)
        print(f"$ {extra} rinna-bot doctor -> {done.returncode} in "
              f"{time.monotonic() - started:.1f} s\n{done.stdout}{done.stderr[-600:]}")
    for mode in ("cold", "warm", "cold", "warm"):
        done = subprocess.run([sys.executable, "-c", CHILD, mode, str(tiny)], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        print(done.stdout.rstrip() or done.stderr[-1500:])
        print("\n".join(line for line in done.stderr.splitlines()
                        if "model ready" in line or "warm-up" in line))


if __name__ == "__main__":
    main()
