"""A flood through `rinna-bot run` (the real entry point as a subprocess, Slack in HTTP mode on
the local fake Web API, the tiny model): user A mentions the bot 60 times at once, user B once
while A's mentions wait. B is answered before most of A's; every A mention ends with exactly
one visible outcome."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import pytest

from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL, WAITING
from tests.slack_fakes import (
    BOT_TOKEN, SIGNING_SECRET, FakeSlack, event_callback, eventually, mention, sign)
from tests.test_run import ROOT, free_port

BUSY = "前の質問に答えています。終わるまでお待ちください。"
WAITING_PREFIX = WAITING.split("{", 1)[0]
FLOOD = 60
B_TS = "300.000001"


def is_final(text: str) -> bool:
    return not (text == PLACEHOLDER or text.startswith(WAITING_PREFIX)
                or text.endswith(PREVIEW_TAIL))


class Replies:
    """The bot's messages per thread, read incrementally from the fake's recorded calls (a
    full scan per poll would starve the bot of CPU on a small machine)."""

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        self.read = 0
        self.thread_of: dict[str, str] = {}  # message ts -> thread
        self.posts: Counter[str] = Counter()
        self.texts: defaultdict[str, list[str]] = defaultdict(list)
        self.final_at: dict[str, list[int]] = defaultdict(list)  # thread -> call indexes

    def refresh(self) -> Replies:
        calls = self.fake.calls
        for index in range(self.read, len(calls)):
            call = calls[index]
            if "_error" in call.params:
                continue
            if call.method == "chat.postMessage":
                thread = str(call.params.get("thread_ts"))
                self.thread_of[str(call.params["_ts"])] = thread
                self.posts[thread] += 1
            elif call.method == "chat.update":
                thread = self.thread_of.get(str(call.params.get("ts")), "?")
            else:
                continue
            self.texts[thread].append(call.text)
            if is_final(call.text):
                self.final_at[thread].append(index)
        self.read = len(calls)
        return self

    def finals(self, thread: str) -> list[str]:
        return [t for t in self.texts[thread] if is_final(t)]

    def waited(self, thread: str) -> list[int]:
        return [int(t.removeprefix(WAITING_PREFIX).removesuffix("番目"))
                for t in self.texts[thread] if t.startswith(WAITING_PREFIX)]


@pytest.mark.parametrize("max_per_user", [100, 2])
async def test_a_flood_from_one_user_does_not_hold_up_another(
        tiny_model_dir: Path, tmp_path: Path, max_per_user: int) -> None:
    fake = await FakeSlack().start()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "MAX_", "QUEUE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "QUANTIZATION": "none", "DEVICE": "cpu", "MAX_NEW_TOKENS": "24",
                "MAX_BATCH": "2", "QUEUE_SIZE": "100", "MAX_PER_USER": str(max_per_user),
                "DATABASE_PATH": str(tmp_path / "run.sqlite3"), "STREAM_INTERVAL_S": "1.0",
                "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_PORT": str(port), "SLACK_API_URL": fake.api_url})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.service.cli", "run", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    stderr_task = asyncio.create_task(process.stderr.read())  # never let the pipe fill up
    url = f"http://127.0.0.1:{port}/slack/events"
    a_threads = [f"200.{i:06d}" for i in range(1, FLOOD + 1)]
    replies = Replies(fake)

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
                assert process.returncode is None, await stderr_task
                return await post({"type": "url_verification", "challenge": "c"}) == 200

            await eventually(serving, timeout=120)
            statuses = await asyncio.gather(*[
                post(event_callback(mention("C1", ts, f"質問{i}です", user="U1")))
                for i, ts in enumerate(a_threads)])
            assert statuses == [200] * FLOOD

            if max_per_user >= FLOOD:
                # B asks once A's mentions are queued in the generator, most still unanswered.
                await eventually(lambda: sum(
                    bool(replies.refresh().waited(th)) for th in a_threads) >= FLOOD // 2,
                    timeout=120, interval=0.1)
                answered_before_b_asked = sum(bool(replies.finals(th)) for th in a_threads)
                assert answered_before_b_asked < FLOOD // 4
            assert await post(event_callback(mention("C1", B_TS, "私の質問です", user="U2"))) == 200
            await eventually(lambda: all(replies.refresh().final_at[th]
                                         for th in [*a_threads, B_TS]),
                             timeout=240, interval=0.1)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=60)
        log = (await stderr_task).decode()
        await fake.close()
    assert process.returncode == 0, log[-3000:]

    replies.refresh()
    for thread in [*a_threads, B_TS]:  # one message per mention, ending in one outcome
        assert replies.posts[thread] == 1, thread
        assert len(replies.finals(thread)) == 1, (thread, replies.texts[thread])
    (b_final,) = replies.finals(B_TS)
    assert b_final != BUSY
    a_finals = [replies.finals(th)[0] for th in a_threads]
    if max_per_user >= FLOOD:
        assert BUSY not in a_finals
        # Round-robin: B's answer completes before most of A's (first come, first served
        # would put it after every A mention queued before it).
        (b_index,) = replies.final_at[B_TS]
        a_before_b = sum(1 for th in a_threads if replies.final_at[th][0] < b_index)
        assert a_before_b < FLOOD // 2, a_before_b
        assert all(p <= 2 for p in replies.waited(B_TS)), replies.waited(B_TS)  # A's next, then B
    else:
        # Two of A's at a time: the others are told at once to wait, and never queue.
        assert BUSY in a_finals
