"""`rinna-bot run` end to end: the real entry point as a subprocess, Slack in HTTP mode against
a local fake Web API, the tiny model, a real SQLite file; stopped by SIGTERM like a service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from tests.slack_fakes import (
    BOT_TOKEN, SIGNING_SECRET, FakeSlack, event_callback, eventually, mention, sign)

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_run_serves_slack_answers_a_mention_and_stops_cleanly(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    fake = await FakeSlack().start()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "QUANTIZATION": "none", "DEVICE": "cpu", "MAX_NEW_TOKENS": "16",
                "DATABASE_PATH": str(tmp_path / "run.sqlite3"), "STREAM_INTERVAL_S": "0",
                "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_PORT": str(port), "SLACK_API_URL": fake.api_url})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.service.cli", "run", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/slack/events"
    try:
        async with aiohttp.ClientSession() as http:
            async def post(payload: dict) -> int:
                body = json.dumps(payload)
                try:
                    async with http.post(url, data=body, headers={
                            "Content-Type": "application/json", **sign(body)}) as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return 0  # not listening yet

            async def serving() -> bool:
                assert process.returncode is None, await process.stderr.read()
                return await post({"type": "url_verification", "challenge": "c"}) == 200

            await eventually(serving, timeout=120)
            assert await post(event_callback(mention("C1", "100.000001", "こんにちは"))) == 200

            def answered() -> bool:
                finals = [c.text for c in fake.called("chat.update")
                          if c.text != PLACEHOLDER and not c.text.endswith(PREVIEW_TAIL)]
                return bool(finals)

            await eventually(answered, timeout=60)
        (placeholder,) = fake.posts("C1", "100.000001")  # in the mention's thread, once
        assert placeholder.text == PLACEHOLDER
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        await fake.close()
    log = stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert "model ready:" in log and "shutting down" in log
    assert BOT_TOKEN not in log and SIGNING_SECRET not in log
    assert "As you gave" not in log  # bolt's note on the token it read itself (bot/service/logs.py)
