"""The remote engine against llama-server (tests/fake_llamacpp.py, written from a real server's
answers): detected by itself, ids both ways across characters that llama-server holds back,
the model card's sampling in llama.cpp's names, cancel frees the slot, a connection closed
after each reply, a dropped kept-alive connection retried once, several URLs, and the bot end
to end with ENGINE_URL. `make test-llamacpp` runs the protocol tests marked `wire` against a
real llama-server instead of the fake (tests/test_llamacpp_real.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot.errors import GeneratorError
from bot.engine.remote import RemoteGenerator
from bot.engine.sampling import GenerationParams
from bot.engine.tokenizer import Tokenizer
from tests.fake_llamacpp import FakeLlamaServer
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "ユーザー: 猫は何ですか?<NL>システム: "
REPLY = "猫は😀かわいいです。<NL>鬱々とした日"  # emoji and kanji as byte pieces
SHOWN = REPLY.replace("<NL>", "\n")
EOS = 3


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


def replying(tokenizer: Tokenizer, text: str, *, eos: bool = True) -> Callable[[list[int]], list[int]]:
    ids = tokenizer.encode(text) + ([EOS] if eos else [])
    return lambda prompt: ids


@pytest.fixture
async def make_server(tokenizer: Tokenizer) -> AsyncIterator[Callable[..., Awaitable[FakeLlamaServer]]]:
    made: list[FakeLlamaServer] = []

    async def make(**options: object) -> FakeLlamaServer:
        made.append(await FakeLlamaServer(tokenizer, **options).start())
        return made[-1]

    yield make
    for server in made:
        await server.close()


@pytest.fixture
async def make_remote(tokenizer: Tokenizer) -> AsyncIterator[Callable[..., Awaitable[RemoteGenerator]]]:
    made: list[RemoteGenerator] = []

    async def make(urls: list[str], **options: object) -> RemoteGenerator:
        options.setdefault("model", "tiny.gguf")
        made.append(await RemoteGenerator(urls, tokenizer, **options).start())
        return made[-1]

    yield make
    for remote in made:
        await remote.aclose()


async def test_ids_both_ways_and_the_card_sampling_in_llamacpp_names(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    server = await make_server(reply=replying(tokenizer, REPLY))
    remote = await make_remote([server.url])
    deltas = await collect(remote.stream(PROMPT))
    assert "".join(deltas) == SHOWN  # the ids llama-server held back were recovered
    assert all(deltas) and not any("\ufffd" in d for d in deltas) and len(deltas) > 5
    assert remote.kinds() == {f"{server.url}/v1": "llamacpp"}  # asked the server itself
    (got,) = server.received
    ids = tokenizer.encode(PROMPT)
    body = got.body
    assert body["prompt"] == ids and body["stream"] is True and body["return_tokens"] is True
    assert (body["temperature"], body["top_k"], body["repeat_penalty"], body["n_predict"]) == (
        0.7, 50, 1.1, 128)
    assert body["repeat_last_n"] == len(ids) + 128  # the whole sequence, as transformers
    assert body["samplers"] == ["penalties", "top_k", "temperature"]  # no top-p/min-p
    assert "seed" not in body
    assert got.finished and remote.running == 0 and remote.tokens_generated == len(
        tokenizer.encode(REPLY)) + 1


async def test_seed_greedy_and_a_reply_cut_by_n_predict(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    text = "猫は今日です。東京の山に雨が"
    server = await make_server(reply=replying(tokenizer, text, eos=False))
    remote = await make_remote([server.url])
    await collect(remote.stream(PROMPT, GenerationParams(seed=7)))
    cut = GenerationParams(do_sample=False, max_new_tokens=len(tokenizer.encode("猫は今日です。東京")))
    assert "".join(await collect(remote.stream(PROMPT, cut))) == "猫は今日です。"
    seeded, greedy = (r.body for r in server.received)
    assert seeded["seed"] == 7
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 0
    assert greedy["n_predict"] == cut.max_new_tokens


async def test_a_turn_start_closes_the_stream_and_the_slot_is_freed(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("はい、そうです。<NL>ユーザー: 次の質問です")
    turn = len(tokenizer.encode("はい、そうです。<NL>ユーザー:"))
    server = await make_server(reply=lambda prompt: ids + [EOS], pause_after=turn)
    remote = await make_remote([server.url])
    assert "".join(await collect(remote.stream(PROMPT))) == "はい、そうです。"
    await server.until(lambda: bool(server.aborted) and not server.processing)


async def test_cancelling_the_consumer_frees_the_slot(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    server = await make_server(reply=replying(tokenizer, REPLY), pause_after=2)
    remote = await make_remote([server.url])
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in remote.stream(PROMPT):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    assert server.processing == {0}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await server.until(lambda: bool(server.aborted) and not server.processing)
    assert remote.running == 0


async def test_replies_in_a_row_although_each_connection_is_closed(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer,
        caplog: pytest.LogCaptureFixture) -> None:
    server = await make_server(reply=replying(tokenizer, "はい。"))
    remote = await make_remote([server.url])
    for _ in range(4):
        assert "".join(await collect(remote.stream(PROMPT))) == "はい。"
    assert all(r.finished for r in server.received) and len(server.received) == 4
    assert "failed" not in caplog.text and remote._endpoints[0].failures == 0


async def test_a_dropped_kept_alive_connection_is_retried_once_on_a_fresh_one(
        tokenizer: Tokenizer, make_remote: Callable[..., Awaitable[RemoteGenerator]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake = await FakeOpenAI(tokenizer, reply=replying(tokenizer, "はい。"), drop_reused=1).start()
    try:
        remote = await make_remote([fake.url], model="rinna-test", kind="vllm")
        assert "".join(await collect(remote.stream(PROMPT))) == "はい。"
        assert "".join(await collect(remote.stream(PROMPT))) == "はい。"  # dropped, then fresh
        assert fake.dropped == 1 and len(fake.received) == 2
        assert fake.received[1].peer != fake.received[0].peer
        assert remote._endpoints[0].failures == 0 and "skipping it" not in caplog.text
        assert "dropped a kept-alive connection" in caplog.text
    finally:
        await fake.close()


async def test_several_urls_take_turns_and_the_start_check_warns(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer,
        caplog: pytest.LogCaptureFixture) -> None:
    one = await make_server(reply=replying(tokenizer, REPLY), pause_after=1)
    two = await make_server(reply=replying(tokenizer, REPLY), pause_after=1, vocab=32000,
                            slot_context=1024, alias="other.gguf")
    remote = await make_remote([one.url, two.url], per_url_limit=1)
    await remote.check()
    assert "its model has 32000 ids, our tokenizer 1000" in caplog.text
    assert "1024 tokens of context per slot" in caplog.text
    assert "serves ['other.gguf'], not 'tiny.gguf'" in caplog.text and "--alias" in caplog.text
    streams = [asyncio.create_task(collect(remote.stream(PROMPT, owner=o))) for o in "ab"]
    await one.until(lambda: bool(one.processing))
    await two.until(lambda: bool(two.processing))
    one.hold.set()
    two.hold.set()
    assert ["".join(d) for d in await asyncio.gather(*streams)] == [SHOWN, SHOWN]


async def test_engine_kind_set_skips_the_question(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer) -> None:
    server = await make_server(reply=replying(tokenizer, "はい。"))
    remote = await make_remote([server.url + "/v1"], kind="llamacpp")
    assert "".join(await collect(remote.stream(PROMPT))) == "はい。"
    wrong = await make_remote([server.url], kind="vllm")  # it posts to /v1/completions: 404
    with pytest.raises(GeneratorError):
        await collect(wrong.stream(PROMPT))


async def test_the_bot_end_to_end_with_engine_url(
        make_server: Callable[..., Awaitable[FakeLlamaServer]], tokenizer: Tokenizer,
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """`rinna-bot chat` as a subprocess answered by llama-server: no local model."""
    server = await make_server(reply=replying(tokenizer, REPLY), alias="rinna-test")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "ENGINE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "DATABASE_PATH": str(tmp_path / "e2e.sqlite3"), "ENGINE_URL": server.url,
                "ENGINE_MODEL": "rinna-test", "LOG_LEVEL": "DEBUG"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.service.cli", "chat", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(
        process.communicate("猫は何ですか?\n".encode()), timeout=120)
    out, log = stdout.decode(), stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert SHOWN in out
    assert "remote: llamacpp" in log and "(llama-server) serves rinna-test" in log
    (got,) = server.received
    assert got.body["prompt"] == tokenizer.encode(PROMPT)


async def test_doctor_names_llama_server_its_model_context_and_vocabulary(
        make_server: Callable[..., Awaitable[FakeLlamaServer]], tiny_model_dir: Path,
        tmp_path: Path) -> None:
    import subprocess

    good = await make_server()
    other = await make_server(vocab=32000)
    small = await make_server(slot_context=512)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "ENGINE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "DATABASE_PATH": str(tmp_path / "d.sqlite3"), "ENGINE_MODEL": "tiny.gguf",
                "ENGINE_URL": f"{good.url},{other.url},{small.url}"})
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot.service.cli", "doctor"],
                                   cwd=tmp_path, env=env, capture_output=True, text=True,
                                   timeout=120)
    lines = done.stdout.splitlines()
    assert (f"✓ engine {good.url}: llama-server, model tiny.gguf, 2048 tokens of context per "
            "slot, vocabulary of 1000 ids as ours") in lines, done.stdout + done.stderr
    assert any(line.startswith(f"✗ engine {other.url}: llama-server") and
               "its vocabulary has 32000 ids, ours 1000" in line and "export-gguf" in line
               for line in lines)
    assert any(line.startswith(f"✗ engine {small.url}: llama-server") and
               "-np N -c N*2048" in line for line in lines)
    # vLLM's /tokenize comparison is not made against llama-server (its /tokenize reads
    # `content` and answers [] to vLLM's `prompt`): the n_vocab line above is the check
    assert not any(line.startswith(("✓ vocabulary", "✗ vocabulary")) for line in lines), lines


async def test_bytes_that_form_no_character_show_as_the_local_engine_shows_them(
        make_server: Callable[..., Awaitable[FakeLlamaServer]],
        make_remote: Callable[..., Awaitable[RemoteGenerator]], tokenizer: Tokenizer,
        caplog: pytest.LogCaptureFixture) -> None:
    # A random model can emit the first two bytes of a 3-byte character and then a word:
    # llama-server holds both back and sends U+FFFD with the word; the local engine's decoder
    # drops the broken bytes. Then an emoji cut after three of its four bytes, then eos.
    byte = tokenizer.byte_piece_ids()
    ids = ([byte[0xE3], byte[0x81]] + tokenizer.encode("猫です。")
           + [byte[0xF0], byte[0x9F], byte[0x98]] + tokenizer.encode("犬") + [EOS])
    server = await make_server(reply=lambda prompt: ids)
    remote = await make_remote([server.url])
    shown = "".join(await collect(remote.stream(PROMPT)))
    assert shown == tokenizer.decode(ids) == "猫です。犬"
    assert remote.tokens_generated == len(ids)  # every id accounted for
    assert "missing from the reply" not in caplog.text


async def test_doctor_passes_for_a_llama_server_serving_our_model(
        make_server: Callable[..., Awaitable[FakeLlamaServer]], tiny_model_dir: Path,
        tmp_path: Path) -> None:
    """A good llama-server is all ✓ (exit 0): doctor does not ask it vLLM's /tokenize, whose
    `prompt` llama-server ignores (it reads `content` and answers no tokens)."""
    import subprocess

    good = await make_server()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "ENGINE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "DATABASE_PATH": str(tmp_path / "d.sqlite3"), "ENGINE_MODEL": "tiny.gguf",
                "ENGINE_URL": good.url, "DISCORD_TOKEN": "doctor.discord.token"})
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot.service.cli", "doctor",
                                                    "--offline"], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tokenizes differently" not in done.stdout
