"""`rinna-bot` for the start-up tests: `python -m tests.slow_start run` is the real `main()`
with one part swapped through its seam (`StartParts`): a model load that begins (it writes the
file named by LOAD_MARK) and never finishes. With FAKE_DISCORD_URL set, discord.py's REST base
is the local fake's (as tests/test_discord_wire.py sets it in-process)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from bot.service.cli import main
from bot.config import Settings
from bot.service.startup import StartParts


async def never_loads(settings: Settings) -> Any:
    Path(os.environ["LOAD_MARK"]).write_text(f"loading {settings.model_id}")
    await asyncio.Event().wait()  # a model load that takes forever


if __name__ == "__main__":
    if url := os.environ.get("FAKE_DISCORD_URL"):
        import discord

        discord.http.Route.BASE = url
    sys.exit(main(sys.argv[1:], StartParts(load_generator=never_loads)))
