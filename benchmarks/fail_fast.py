"""How long a bad start takes to say so: `rinna-bot run` as a subprocess, stdin not a terminal,
until it exits 2. Cases: a setting of the wrong shape (caught before anything loads), a Slack
bot token that a local fake Web API rejects (`invalid_auth`) while the model load never
finishes (tests/slow_start.py), and the same rejection with the real loader on the tiny model.
Before issue 24 the rejected token was found only after the whole model load (minutes on a
CPU for the real model). Target: a few seconds, independent of the model.

    python -m benchmarks.fail_fast
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median
from bot.engine.tiny_model import build_tiny_model
from tests.slack_fakes import BOT_TOKEN, SIGNING_SECRET, Failure, FakeSlack

RUNS = 5
ROOT = Path(__file__).resolve().parent.parent


async def exit_time(module: str, directory: Path, **env: str) -> tuple[float, int]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "LOG_"))}
    environment.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DEVICE": "cpu",
                        "QUANTIZATION": "none", "DATABASE_PATH": str(directory / "db.sqlite3"),
                        "LOAD_MARK": str(directory / "load-started"), **env})
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "run", cwd=directory, env=environment,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    status = await asyncio.wait_for(process.wait(), timeout=300)
    return time.perf_counter() - started, status


async def main() -> None:
    fake = await FakeSlack().start()
    fake.always_fail["auth.test"] = Failure("invalid_auth")
    slack = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
             "SLACK_API_URL": fake.api_url}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        model = build_tiny_model(directory / "model")
        cases = {
            "SLACK_BOT_TOKEN=hello (shape)": ("bot.service.cli", {"SLACK_BOT_TOKEN": "hello",
                                                          "SLACK_SIGNING_SECRET": SIGNING_SECRET}),
            "rejected token, load never ends": ("tests.slow_start", slack),
            "rejected token, tiny model loading": ("bot.service.cli", {**slack,
                                                               "MODEL_ID": str(model)}),
        }
        print(f"machine: {machine()}")
        for name, (module, env) in cases.items():
            runs = [await exit_time(module, directory, **env) for _ in range(RUNS)]
            assert all(status == 2 for _, status in runs), runs
            times = [seconds for seconds, _ in runs]
            print(f"{name:40s} exit 2 in median {median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}, {RUNS} runs)")
    await fake.close()


if __name__ == "__main__":
    asyncio.run(main())
