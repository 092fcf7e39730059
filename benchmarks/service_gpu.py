"""Service checks on a GPU (issue 13): `doctor` on CUDA (device line, bitsandbytes 4-bit and
8-bit on the GPU), DEVICE=cuda:N beyond the last GPU refused, load + warm-up with DEVICE=auto
(no CPU warning), and per-request times after a cold start with and without the warm-up.
Tiny model, no network. Run: HF_HUB_OFFLINE=1 python -m benchmarks.service_gpu"""
import asyncio, os, subprocess, sys, time, json, logging
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from tests.tiny_model import build_tiny_model
tiny = build_tiny_model(Path("/tmp/tiny-ops"))
env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
env.update(MODEL_ID=str(tiny), DATABASE_PATH="/tmp/ops-gpu.sqlite3", HF_HUB_CACHE="/tmp/hub-empty")

def cli(*args, **extra):
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bot.cli", *args], env={**env, **extra},
                       capture_output=True, text=True, timeout=240)
    print(f"$ {extra} rinna-bot {' '.join(args)}  -> rc={r.returncode} in {time.monotonic()-t:.1f}s")
    print(r.stdout.rstrip()); print("stderr:", r.stderr.strip()[-800:]); print()

cli("--version")
cli("doctor", DEVICE="cuda:0", QUANTIZATION="4bit", SLACK_BOT_TOKEN="xoxb-x", SLACK_APP_TOKEN="xapp-x")
cli("doctor", DEVICE="auto", QUANTIZATION="8bit", SLACK_BOT_TOKEN="xoxb-x", SLACK_APP_TOKEN="xapp-x")
cli("doctor", DEVICE="cuda:1", QUANTIZATION="4bit")

CHILD = r'''
import asyncio, logging, sys, time, io
from bot.config import load_settings
from bot.generator import load_generator
from bot.cli import warm_up
from bot.metrics import Metrics, MeteredGenerator
stream = io.StringIO()
logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stderr), logging.StreamHandler(stream)])
WARM = sys.argv[1] == "warm"
async def main():
    s = load_settings(model_id=sys.argv[2], device="auto", quantization="4bit", max_new_tokens=32)
    g = await load_generator(s)
    if WARM:
        await warm_up(g)
    m = Metrics(); m.watch_generator(g); mg = MeteredGenerator(g, m)
    prompt = "ユーザー: こんにちは<NL>システム: "
    times = []
    for i in range(3):
        t = time.monotonic(); first = None; n = 0
        async for d in mg.stream(prompt):
            if first is None: first = time.monotonic() - t
            n += 1
        times.append((first, time.monotonic() - t, n))
    print("WARM" if WARM else "COLD", "per request (ttft s, total s, deltas):",
          [(round(a or -1, 4), round(b, 4), n) for a, b, n in times])
    print("\n".join(l for l in m.exposition().decode().splitlines() if l.startswith("rinna_") and "bucket" not in l))
    await g.aclose()
    print("CPU warning count:", stream.getvalue().count("found no CUDA device"))
asyncio.run(main())
'''
for mode in ("cold", "warm", "cold", "warm"):
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(tiny)], env=env, capture_output=True, text=True, timeout=240)
    print(f"--- {mode} rc={r.returncode} in {time.monotonic()-t:.1f}s")
    print(r.stdout.rstrip())
    print("log:", "\n".join(l for l in r.stderr.splitlines() if "model ready" in l or "warm-up" in l or "Error" in l or "CUDA" in l)[-1500:])
