"""The remote engine (bot/engine/remote.py) against a local fake of vLLM's OpenAI-compatible server
(tests/fake_openai.py): token ids both ways, the local engine's stop rule, cancellation that the
server sees, busy and failing servers, several URLs, the API key, and the bot end to end."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.config import Settings, load_settings
from bot.conversation import ConversationKey, IncomingMessage
from bot.core.chat import ChatConfig, ChatService
from bot.engine.generation import GenerationParams
from bot.engine.generator import load_generator
from bot.engine.remote import RemoteGenerator
from bot.engine.tokenizer import Tokenizer
from bot.errors import ConfigError, GenerationTimeout, GeneratorError, QueueFullError, UserBusyError
from storage.history import HistoryStore
from tests.fake_openai import FakeOpenAI
from tests.fakes import RecordingSink
from tests.slack_fakes import eventually

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "ユーザー: 猫は何ですか?<NL>システム: "
# Emoji and kanji outside the tiny vocabulary come as byte pieces: 3-4 ids per character.
REPLY = "猫は😀かわいいです。<NL>鬱々とした日"
SHOWN = REPLY.replace("<NL>", "\n")
EOS = 3


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


@pytest.fixture
async def make_fake(tokenizer: Tokenizer) -> AsyncIterator[Callable[..., Awaitable[FakeOpenAI]]]:
    made: list[FakeOpenAI] = []

    async def make(**options: object) -> FakeOpenAI:
        made.append(await FakeOpenAI(tokenizer, **options).start())
        return made[-1]

    yield make
    for fake in made:
        await fake.close()


@pytest.fixture
async def make_remote(tokenizer: Tokenizer) -> AsyncIterator[Callable[..., Awaitable[RemoteGenerator]]]:
    made: list[RemoteGenerator] = []

    async def make(urls: list[str], **options: object) -> RemoteGenerator:
        options.setdefault("model", "rinna-test")
        made.append(await RemoteGenerator(urls, tokenizer, **options).start())
        return made[-1]

    yield make
    for remote in made:
        await remote.aclose()


def replying(tokenizer: Tokenizer, text: str, *, eos: bool = True) -> Callable[[list[int]], list[int]]:
    ids = tokenizer.encode(text) + ([EOS] if eos else [])
    return lambda prompt: ids


async def test_exact_text_from_ids_across_chunks_and_the_card_sampling(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), chunk_sizes=(1, 2, 3))
    remote = await make_remote([fake.url])
    deltas = await collect(remote.stream(PROMPT))
    assert "".join(deltas) == SHOWN
    assert all(deltas) and not any("\ufffd" in d for d in deltas)  # never half a character
    assert len(deltas) > 5  # it streamed
    (got,) = fake.received
    assert got.body["prompt"] == tokenizer.encode(PROMPT)  # our ids, not the server's tokenizer
    assert got.body["stream"] is True and got.body["return_token_ids"] is True
    assert got.body["stop_token_ids"] == [EOS]
    assert (got.body["temperature"], got.body["repetition_penalty"], got.body["top_k"],
            got.body["max_tokens"]) == (0.7, 1.1, 50, 128)
    assert "seed" not in got.body
    assert got.finished and remote.running == 0


async def test_a_finished_reply_leaves_its_connection_for_the_next(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    # vLLM sends the chunk with eos and finish_reason, then `[DONE]`: the client reads on to
    # `[DONE]` instead of dropping the connection at eos.
    fake = await make_fake(reply=replying(tokenizer, "はい"), pause_before_done=True)
    remote = await make_remote([fake.url])
    first = asyncio.create_task(collect(remote.stream(PROMPT)))
    await fake.until(lambda: fake.paused == 1)
    fake.hold.set()
    assert "".join(await first) == "はい"
    assert "".join(await collect(remote.stream(PROMPT))) == "はい"
    one, two = fake.received
    assert one.finished and not one.aborted
    assert two.peer == one.peer  # the same connection


async def test_seed_greedy_and_max_tokens_clamped_to_the_context(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, "はい"))
    remote = await make_remote([fake.url])
    await collect(remote.stream(PROMPT, GenerationParams(seed=7)))
    await collect(remote.stream(PROMPT, GenerationParams(do_sample=False, max_new_tokens=40)))
    long_prompt = "猫は" * 2000
    room = 2048 - len(tokenizer.encode(long_prompt))
    assert 0 < room < 128
    await collect(remote.stream(long_prompt))
    seeded, greedy, long = (r.body for r in fake.received)
    assert seeded["seed"] == 7
    assert greedy["temperature"] == 0.0 and "top_k" not in greedy and greedy["max_tokens"] == 40
    assert long["max_tokens"] == room
    with pytest.raises(GeneratorError):  # a prompt that fills the context is never sent
        await collect(remote.stream("猫は" * 5000))
    assert len(fake.received) == 3


async def test_stops_at_a_generated_turn_start_and_the_server_sees_the_abort(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("はい、そうです。<NL>ユーザー: 次の質問です")
    turn = len(tokenizer.encode("はい、そうです。<NL>ユーザー:"))
    # The server would go on; it pauses right after the turn start to see what the client does.
    fake = await make_fake(reply=lambda prompt: ids + [EOS], pause_after=turn)
    remote = await make_remote([fake.url])
    text = "".join(await collect(remote.stream(PROMPT)))
    assert text == "はい、そうです。"
    await fake.until(lambda: bool(fake.aborted))  # the client closed: vLLM aborts it
    assert remote.running == 0


async def test_cancelling_the_consumer_closes_the_connection(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=2)
    remote = await make_remote([fake.url])
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in remote.stream(PROMPT):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.until(lambda: bool(fake.aborted))
    assert not fake.received[0].finished and remote.running == 0

    stream = remote.stream(PROMPT)  # closing the iterator early does the same
    await anext(stream)
    await stream.aclose()
    await fake.until(lambda: len(fake.aborted) == 2)


async def test_a_timeout_closes_the_stream(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=1)
    remote = await make_remote([fake.url])
    with pytest.raises(GenerationTimeout):
        await collect(remote.stream(PROMPT, GenerationParams(timeout_s=0.3)))
    await fake.until(lambda: bool(fake.aborted))


async def test_a_429_becomes_the_busy_notice(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]],
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    fake = await make_fake(status=429)
    remote = await make_remote([fake.url])
    chat = ChatService(store, remote, tokenizer, ChatConfig(stream_interval_s=0.0))
    sink = RecordingSink()
    key = ConversationKey(platform="test", workspace="w", channel="c")
    await chat.handle(key, IncomingMessage(text="こんにちは", author="u1", delivery_key="m1"), sink)
    assert sink.final() == QueueFullError.user_message
    fake.status = 503
    with pytest.raises(QueueFullError):
        await collect(remote.stream(PROMPT))
    fake.status = 500
    with pytest.raises(GeneratorError) as failed:
        await collect(remote.stream(PROMPT))
    assert not isinstance(failed.value, QueueFullError)


async def test_an_error_event_mid_stream_ends_with_the_error(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, "はい、そうです。猫です。"), error_after=4)
    remote = await make_remote([fake.url])
    shown: list[str] = []
    with pytest.raises(GeneratorError) as failed:
        async for delta in remote.stream(PROMPT):
            shown.append(delta)
    assert type(failed.value) is GeneratorError
    assert "".join(shown) == tokenizer.decode(tokenizer.encode("はい、そうです。猫です。")[:4])
    assert remote.running == 0


def test_engine_url_settings(settings: Settings) -> None:
    assert settings.engine_urls == () and settings.engine_url is None
    both = settings.model_copy(update={"engine_url": " http://a:8000/v1 ,https://b/v1,"})
    assert both.engine_urls == ("http://a:8000/v1", "https://b/v1")
    with pytest.raises(ConfigError, match="ENGINE_URL"):
        load_settings(engine_url="vllm:8000")


async def test_an_unreachable_engine_is_the_error_notice(
        make_remote: Callable[..., Awaitable[RemoteGenerator]]) -> None:
    remote = await make_remote([closed_port_url()])
    with pytest.raises(GeneratorError) as failed:
        await collect(remote.stream(PROMPT))
    assert failed.value.user_message == GeneratorError.user_message


async def test_two_urls_share_the_load(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    reply = replying(tokenizer, REPLY)
    one = await make_fake(reply=reply, pause_after=1)
    two = await make_fake(reply=reply, pause_after=1)
    remote = await make_remote([one.url, two.url])
    streams = [asyncio.create_task(collect(remote.stream(PROMPT))) for _ in range(6)]
    await eventually(lambda: one.active + two.active == 6)
    assert (one.active, two.active) == (3, 3)
    one.hold.set()
    two.hold.set()
    assert ["".join(d) for d in await asyncio.gather(*streams)] == [SHOWN] * 6
    for _ in range(4):  # one at a time, they alternate
        await collect(remote.stream(PROMPT))
    assert (len(one.received), len(two.received)) == (5, 5)


async def test_a_per_url_limit_queues_the_rest_with_positions(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=1)
    remote = await make_remote([fake.url], per_url_limit=1, queue_size=2)
    positions: list[tuple[int, int]] = []

    def waiting(n: int) -> Callable[[int], None]:
        return lambda position: positions.append((n, position))

    running = asyncio.create_task(collect(remote.stream(PROMPT)))
    await fake.until(lambda: fake.active == 1)
    queued = [asyncio.create_task(collect(remote.stream(PROMPT, on_wait=waiting(n))))
              for n in (1, 2)]
    await eventually(lambda: remote.waiting == 2)
    with pytest.raises(QueueFullError):  # the queue is full: busy at once
        await collect(remote.stream(PROMPT))
    assert positions == [(1, 1), (2, 2)]
    fake.hold.set()
    results = await asyncio.gather(running, *queued)
    assert ["".join(r) for r in results] == [SHOWN] * 3
    assert fake.max_active == 1
    assert (2, 1) in positions  # moved up when the first finished


async def test_a_request_cancelled_while_waiting_leaves_the_queue(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=1)
    remote = await make_remote([fake.url], per_url_limit=1, queue_size=4)
    positions: list[int] = []
    running = asyncio.create_task(collect(remote.stream(PROMPT)))
    await fake.until(lambda: fake.active == 1)
    gone = asyncio.create_task(collect(remote.stream(PROMPT)))
    await eventually(lambda: remote.waiting == 1)
    kept = asyncio.create_task(collect(remote.stream(PROMPT, on_wait=positions.append)))
    await eventually(lambda: positions == [2])
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert remote.waiting == 1
    await eventually(lambda: positions == [2, 1])  # moved up at once
    fake.hold.set()
    assert ["".join(r) for r in await asyncio.gather(running, kept)] == [SHOWN] * 2
    assert (remote.running, remote.waiting) == (0, 0)


async def test_a_slot_granted_to_a_request_cancelled_before_it_ran_is_given_back(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=1)
    remote = await make_remote([fake.url], per_url_limit=1)
    first = remote.stream(PROMPT)
    shown = [await anext(first)]
    waiting = asyncio.create_task(collect(remote.stream(PROMPT)))
    await eventually(lambda: remote.waiting == 1)
    fake.hold.set()
    shown += [delta async for delta in first]  # its end hands the slot to the waiting one...
    waiting.cancel()  # ...which is cancelled before it could run
    await asyncio.gather(waiting, return_exceptions=True)
    assert "".join(shown) == SHOWN
    assert (remote.running, remote.waiting) == (0, 0)
    positions: list[int] = []
    assert "".join(await collect(remote.stream(PROMPT, on_wait=positions.append))) == SHOWN
    assert positions == []  # served at once: the slot was not lost


async def test_one_owner_flooding_does_not_push_back_another_owners_first_request(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    """Round-robin across owners (bot.engine.scheduler): B's first request waits behind at most one
    of A's, not behind A's whole backlog, and B is told the position it really has."""
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=1)
    remote = await make_remote([fake.url], per_url_limit=1, queue_size=16, max_per_user=8)
    flood = [asyncio.create_task(collect(remote.stream(PROMPT, owner="A"))) for _ in range(6)]
    await eventually(lambda: fake.active == 1 and remote.waiting == 5)
    b_prompt = "ユーザー: 犬は?<NL>システム: "
    b_positions: list[int] = []
    b = asyncio.create_task(collect(remote.stream(b_prompt, owner="B",
                                                  on_wait=b_positions.append)))
    await eventually(lambda: remote.waiting == 6)
    await eventually(lambda: b_positions == [2])  # FIFO would say 6
    fake.hold.set()
    results = await asyncio.gather(b, *flood)
    assert ["".join(r) for r in results] == [SHOWN] * 7
    assert fake.max_active == 1
    order = ["B" if r.body["prompt"] == tokenizer.encode(b_prompt) else "A"
             for r in fake.received]
    assert order == ["A", "A", "B", "A", "A", "A", "A"]
    assert b_positions == [2, 1]  # moved up once, then admitted


async def test_one_owner_beyond_max_per_user_is_told_to_wait(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    """MAX_PER_USER counts an owner's requests running on a URL and waiting for one."""
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=1)
    remote = await make_remote([fake.url], per_url_limit=1, queue_size=16, max_per_user=2)
    running = asyncio.create_task(collect(remote.stream(PROMPT, owner="A")))
    await fake.until(lambda: fake.active == 1)
    waiting = asyncio.create_task(collect(remote.stream(PROMPT, owner="A")))
    await eventually(lambda: remote.waiting == 1)
    with pytest.raises(UserBusyError):  # at once, without reaching the engine
        await collect(remote.stream(PROMPT, owner="A"))
    other = asyncio.create_task(collect(remote.stream(PROMPT, owner="B")))  # others still may
    await eventually(lambda: remote.waiting == 2)
    assert len(fake.received) == 1
    fake.hold.set()
    assert ["".join(r) for r in await asyncio.gather(running, waiting, other)] == [SHOWN] * 3
    assert "".join(await collect(remote.stream(PROMPT, owner="A"))) == SHOWN  # freed again

    both = await make_remote([fake.url], per_url_limit=2, max_per_user=2)  # both running
    fake.hold.clear()
    started = len(fake.received)
    first = [asyncio.create_task(collect(both.stream(PROMPT, owner="A"))) for _ in range(2)]
    await fake.until(lambda: fake.active == 2)
    with pytest.raises(UserBusyError):
        await collect(both.stream(PROMPT, owner="A"))
    fake.hold.set()
    assert ["".join(r) for r in await asyncio.gather(*first)] == [SHOWN] * 2
    assert len(fake.received) == started + 2


async def test_a_failing_url_is_skipped_for_a_while(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    now = [100.0]
    broken = await make_fake(status=500)
    good = await make_fake(reply=replying(tokenizer, REPLY))
    remote = await make_remote([broken.url, good.url], cooldown_s=5.0, clock=lambda: now[0])
    assert "".join(await collect(remote.stream(PROMPT))) == SHOWN  # tried broken, then good
    assert (len(broken.received), len(good.received)) == (1, 1)
    for _ in range(3):
        assert "".join(await collect(remote.stream(PROMPT))) == SHOWN
    assert len(broken.received) == 1  # skipped while it cools down
    now[0] += 5.1
    await collect(remote.stream(PROMPT))
    assert len(broken.received) == 2  # tried again, failed again: now skipped for 10 s
    now[0] += 5.1
    await collect(remote.stream(PROMPT))
    assert len(broken.received) == 2
    broken.status = None  # it recovers
    broken.reply = replying(tokenizer, REPLY)
    now[0] += 5.0
    await collect(remote.stream(PROMPT))
    assert len(broken.received) == 3 and broken.received[-1].finished

    refused = await make_remote([closed_port_url(), good.url])  # connection refused: same
    assert "".join(await collect(refused.stream(PROMPT))) == SHOWN


async def test_falls_back_to_logprobs_on_a_server_without_return_token_ids(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    fake = await make_fake(reply=replying(tokenizer, REPLY), token_ids=False, chunk_sizes=(2, 1))
    remote = await make_remote([fake.url])
    assert "".join(await collect(remote.stream(PROMPT))) == SHOWN
    assert "".join(await collect(remote.stream(PROMPT))) == SHOWN
    first, retried, second = (r.body for r in fake.received)
    assert first["return_token_ids"] is True and "logprobs" not in first
    for body in (retried, second):
        assert body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True
        assert "return_token_ids" not in body


async def test_the_api_key_is_sent_as_bearer_and_never_shown(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer,
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-remote-secret-4242"
    caplog.set_level(logging.DEBUG)
    fake = await make_fake(reply=replying(tokenizer, REPLY), api_key=key)
    remote = await make_remote([fake.url], api_key=SecretStr(key))
    await remote.check()
    assert "".join(await collect(remote.stream(PROMPT))) == SHOWN
    assert fake.received[0].headers["Authorization"] == f"Bearer {key}"
    wrong = await make_remote([fake.url], api_key=SecretStr("sk-wrong-key-0000"))
    await wrong.check()
    with pytest.raises(GeneratorError):
        await collect(wrong.stream(PROMPT))
    assert "ENGINE_API_KEY" in caplog.text
    configured = settings.model_copy(update={"engine_api_key": SecretStr(key)})
    for shown in (caplog.text, repr(remote), str(remote), repr(configured), str(configured)):
        assert key not in shown and "sk-wrong-key" not in shown


def test_a_password_in_engine_url_is_never_shown(tokenizer: Tokenizer) -> None:
    remote = RemoteGenerator(["http://bot:pw-remote-9931@vllm.example:8000/v1"], tokenizer,
                             model="rinna")
    for shown in (repr(remote), repr(remote._endpoints), str(remote._endpoints),
                  str(remote.kinds())):
        assert "pw-remote-9931" not in shown and "vllm.example:8000" in shown, shown


async def test_load_generator_picks_the_remote_engine_from_settings(
        make_fake: Callable[..., Awaitable[FakeOpenAI]], tokenizer: Tokenizer,
        settings: Settings, store: HistoryStore) -> None:
    one = await make_fake(reply=replying(tokenizer, REPLY))
    two = await make_fake(reply=replying(tokenizer, REPLY))
    remote = await load_generator(settings.model_copy(update={
        "engine_url": f"{one.url}, {two.url.removesuffix('/v1')}/",
        "engine_model": "rinna-test", "engine_concurrency": 4, "temperature": 0.9,
        "repetition_penalty": 1.2, "max_per_user": 3}))
    try:
        assert isinstance(remote, RemoteGenerator)
        assert remote._pool.scheduler.max_per_user == 3  # MAX_PER_USER reaches the remote engine
        chat = ChatService(store, remote, remote.tokenizer,
                           ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0))
        sink = RecordingSink()
        key = ConversationKey(platform="test", workspace="w", channel="c")
        await chat.handle(key, IncomingMessage(text="猫は何ですか?", author="u1",
                                               delivery_key="m1"), sink)
        cut = tokenizer.decode(tokenizer.encode(REPLY)[:settings.max_new_tokens])
        # MAX_NEW_TOKENS reached the engine; the cut reply ends at its last sentence end
        assert len(cut) < len(SHOWN) and cut.startswith(sink.final())
        assert sink.final().endswith("。") and len(sink.final()) < len(cut)
        got = (one.received + two.received)[0].body
        assert got["prompt"] == tokenizer.encode(PROMPT)
        assert got["max_tokens"] == settings.max_new_tokens
        assert (got["temperature"], got["repetition_penalty"]) == (0.9, 1.2)  # from settings
    finally:
        await remote.aclose()


def test_importing_the_remote_engine_does_not_import_torch() -> None:
    code = "import sys, bot.engine.remote; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


async def test_the_bot_end_to_end_with_engine_url(
        make_fake: Callable[..., Awaitable[FakeOpenAI]], tokenizer: Tokenizer,
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """`rinna-bot chat` as a subprocess, answered by the fake engine: no local model."""
    key = "sk-e2e-secret-77"
    fake = await make_fake(reply=replying(tokenizer, REPLY), api_key=key, chunk_sizes=(2,))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "ENGINE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "DATABASE_PATH": str(tmp_path / "e2e.sqlite3"), "ENGINE_URL": fake.url,
                "ENGINE_API_KEY": key, "ENGINE_MODEL": "rinna-test", "LOG_LEVEL": "DEBUG"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.service.cli", "chat", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(
        process.communicate("猫は何ですか?\n".encode()), timeout=120)
    out, log = stdout.decode(), stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert SHOWN in out
    assert "engine ready: rinna-test" in log and "model ready:" not in log
    assert key not in log and key not in out
    (got,) = fake.received
    assert got.body["prompt"] == tokenizer.encode(PROMPT)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_a_background_request_waits_for_every_persons_request_and_is_not_preempted(
        make_fake: Callable[..., Awaitable[FakeOpenAI]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    """A summary is sent only while no person's request is in flight or waiting (the URL had
    room all along), and once sent it is not aborted for a person's request."""
    fake = await make_fake(reply=replying(tokenizer, REPLY), pause_after=2)
    remote = await make_remote([fake.url])
    person = asyncio.create_task(collect(remote.stream(PROMPT, owner="slack:U1")))
    await fake.until(lambda: fake.paused == 1)  # the person's answer is being written
    summary = asyncio.create_task(collect(remote.stream(PROMPT, background=True)))
    await eventually(lambda: remote._pool.scheduler.background == 1)
    assert len(fake.received) == 1  # not sent while the person's request is in flight
    fake.hold.set()
    assert "".join(await person) == SHOWN
    assert await summary == [SHOWN]  # sent after it, yielded once, whole
    fake.hold.clear()
    fake.paused = 0
    summary = asyncio.create_task(collect(remote.stream(PROMPT, background=True)))
    await fake.until(lambda: fake.paused == 1)  # the summary is being written
    person = asyncio.create_task(collect(remote.stream(PROMPT, owner="slack:U1")))
    await fake.until(lambda: len(fake.received) == 4)  # the person's goes out beside it
    fake.hold.set()
    assert "".join(await person) == SHOWN and await summary == [SHOWN]
    assert not fake.aborted  # nothing was preempted
