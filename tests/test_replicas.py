"""Three replicas on one PostgreSQL: three real `rinna-bot run` processes (Slack HTTP mode
against the local fake Web API, the tiny model) on the throwaway server, sharing every
conversation. 300 mentions go to random replicas; a refused or unanswered request goes to
another replica as Slack's retry, and a share of the acknowledged ones are retried on another
replica too (Slack retries when the acknowledgement is slow). Two replicas are killed with
SIGKILL in the middle and started again. In the end: every event acknowledged, each thread
holds exactly one bot message showing a final answer (no placeholder left), each question
stored once, each delivery finished.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.slack_fakes import FakeSlack, event_callback, mention
from tests.test_crash import CHANNEL, Bot, Event, final, thread_of

EVENTS = 300
KILLED = (0, 1)  # which replicas are killed (after a third and half of the events)
LEASE_S = "3"


def replica(fake: FakeSlack, dsn: str, tmp_path: Path, model: Path, name: str) -> Bot:
    return Bot(fake, tmp_path / f"{name}-unused.sqlite3", tmp_path, model, DATABASE_URL=dsn,
               LEASE_S=LEASE_S, MAX_PER_USER="50", QUEUE_SIZE="512", MAX_NEW_TOKENS="8",
               DATABASE_POOL_SIZE="8")


def events(n: int) -> list[Event]:
    made = []
    for number in range(1, n + 1):
        ts = f"{2000 + number}.000001"
        text = f"レプリカへの質問その{number}"
        made.append(Event(ts, text, event_callback(mention(CHANNEL, ts, text,
                                                           user=f"U{number % 40}"))))
    return made


async def send(bots: list[Bot], http: aiohttp.ClientSession, event: Event,
               rng: random.Random) -> None:
    """To a random replica; on a refusal or no answer, Slack's retry to another one, until
    one acknowledges. Then, sometimes, a retry of the acknowledged event elsewhere too."""
    attempt = 0
    while not event.acked:
        alive = [bot for bot in bots if bot.alive] or bots
        status = await rng.choice(alive).post(http, event.payload, attempt or None)
        event.acked = status == 200
        attempt += 1
        if attempt > 200:
            raise AssertionError(f"event {event.ts} never acknowledged")
        if not event.acked:
            await asyncio.sleep(0.05)  # Slack's back-off between retries
    if rng.random() < 0.25:
        await rng.choice(bots).post(http, event.payload, attempt)


def unfinished(fake: FakeSlack, sent: list[Event]) -> list[Event]:
    return [e for e in sent if not any(final(str(m.get("text"))) for m in thread_of(fake, e))]


@pytest.mark.slow  # about 2.5 minutes on 2 cores: three processes started five times
@pytest.mark.timeout(900)
async def test_three_replicas_two_killed_nothing_lost_nothing_twice(
        tiny_model_dir: Path, tmp_path: Path, pg_dsn: str) -> None:
    rng = random.Random(25)
    fake = await FakeSlack(keep_messages=True).start()
    bots = [replica(fake, pg_dsn, tmp_path, tiny_model_dir, f"r{i}") for i in range(3)]
    sent = events(EVENTS)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(bot.start(http) for bot in bots))
            print(f"three replicas up in {time.monotonic() - started:.1f} s", flush=True)
            restarts: list[asyncio.Task[None]] = []
            for index, event in enumerate(sent):
                if index in (EVENTS // 3, EVENTS // 2):
                    victim = KILLED[0] if index == EVENTS // 3 else KILLED[1]
                    await bots[victim].kill()
                    bots[victim] = replica(fake, pg_dsn, tmp_path, tiny_model_dir,
                                           f"r{victim}-again")
                    restarts.append(asyncio.create_task(bots[victim].start(http)))
                await send(bots, http, event, rng)
            await asyncio.gather(*restarts)
            sending_s = time.monotonic() - started
            try:
                await fake.wait_for(lambda: not unfinished(fake, sent), timeout=300)
            except TimeoutError:
                left = {e.ts: [m.get("text") for m in thread_of(fake, e)]
                        for e in unfinished(fake, sent)[:10]}
                raise AssertionError(f"unfinished: {left}\n{bots[2].log[-3000:]}") from None
            for bot in bots:
                assert await bot.stop() == 0, bot.log[-3000:]
    finally:
        for bot in bots:
            if bot.alive:
                await bot.kill()
        await fake.close()
    duplicates = sum(max(0, len(thread_of(fake, e)) - 1) for e in sent)
    connection = await asyncpg.connect(pg_dsn)
    try:
        stored = dict(await connection.fetch(
            "SELECT text, count(*) FROM turns WHERE speaker = 'ユーザー' GROUP BY text"))
        states = dict(await connection.fetch(
            "SELECT state, count(*) FROM deliveries GROUP BY state"))
    finally:
        await connection.close()
    lost = sum(stored.get(e.text, 0) != 1 for e in sent)
    taken_over = sum(bot.recovered() for bot in bots)
    print(f"replica figures: events={EVENTS} duplicates={duplicates} lost={lost} "
          f"states={states} recovered_at_start={taken_over} sending={sending_s:.1f} s "
          f"total={time.monotonic() - started:.1f} s", flush=True)
    assert all(e.acked for e in sent)
    assert (duplicates, lost) == (0, 0)
    assert not unfinished(fake, sent)
    assert set(states) <= {"answered", "failed"} and sum(states.values()) == EVENTS, states
