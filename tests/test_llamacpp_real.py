"""Against a real llama-server (`make test-llamacpp`; deselected from the default run by the
`llamacpp` mark): the tiny model exported with `rinna-bot export-gguf`, then llama.cpp's own
tokenisation and logits checked against sentencepiece and transformers, the remote engine's
protocol (detection, ids both ways, greedy bytes equal to the local engine's, cancel freeing
the slot, replies in a row on connections the server closes) and a chat through ENGINE_URL.
LLAMACPP_BIN names the directory holding llama-server (tests/llamacpp/build.sh prints it)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import torch

from bot.conversation import Speaker, Turn
from bot.engine.generation import GenerationParams
from bot.core.prompt import build_prompt
from bot.engine.remote import RemoteGenerator
from bot.engine.tokenizer import Tokenizer
from tests.llamacpp.server import LlamaServer, export_with_command

pytestmark = pytest.mark.llamacpp
ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [  # the bot's prompts over words the tiny vocabulary has (no byte pieces)
    build_prompt([Turn(Speaker.USER, "東京の天気は晴れでしょうか?")]),
    build_prompt([Turn(Speaker.USER, "明日の天気は?\n大阪は  雨ですか"),
                  Turn(Speaker.SYSTEM, "晴れです。 OK"), Turn(Speaker.USER, "hello  world")]),
    build_prompt([Turn(Speaker.USER, "コンタクトレンズは高いですか?"),
                  Turn(Speaker.SYSTEM, "目が痛い理由です。"),
                  Turn(Speaker.USER, "目が赤いです。")]),
]
OUTSIDE = build_prompt([Turn(Speaker.USER, "猫😀です")])  # an emoji: byte pieces in sentencepiece


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    found = os.environ.get("LLAMACPP_BIN")
    if not found or not (Path(found) / "llama-server").is_file():
        pytest.skip("LLAMACPP_BIN is not set to a directory with llama-server (make test-llamacpp)")
    return Path(found)


@pytest.fixture(scope="module")
def server(bin_dir: Path, tiny_model_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    work = tmp_path_factory.mktemp("llamacpp")
    gguf = export_with_command(tiny_model_dir, work / "tiny-f32.gguf", "f32")
    with LlamaServer(bin_dir, gguf, slots=2, alias="tiny.gguf", log=work / "server.log") as running:
        yield running


@pytest.fixture
async def remote(server: LlamaServer, tokenizer: Tokenizer) -> AsyncIterator[RemoteGenerator]:
    made = await RemoteGenerator([server.url], tokenizer, model="tiny.gguf").start()
    yield made
    await made.aclose()


async def post(server: LlamaServer, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as session, session.post(server.url + path,
                                                                  json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def slots_busy(server: LlamaServer) -> bool:
    async with aiohttp.ClientSession() as session, session.get(server.url + "/slots") as got:
        return any(slot["is_processing"] for slot in await got.json())


async def test_llamacpp_tokenises_the_bots_prompts_as_sentencepiece(
        server: LlamaServer, tokenizer: Tokenizer) -> None:
    byte_pieces = set(tokenizer.byte_piece_ids().values())
    for prompt in PROMPTS:
        ours = tokenizer.encode(prompt)
        assert not byte_pieces & set(ours), prompt  # within the vocabulary, as the real one's
        got = await post(server, "/tokenize", {"content": prompt, "add_special": False})
        assert got["tokens"] == ours, prompt
    # No byte fallback in llama.cpp's unigram tokenizer: the emoji is one [UNK] there, four
    # byte pieces here. The bot sends ids, so this never reaches the model.
    got = (await post(server, "/tokenize", {"content": OUTSIDE, "add_special": False}))["tokens"]
    ours = tokenizer.encode(OUTSIDE)
    assert got != ours and tokenizer.unk_id in got


async def test_next_token_logits_match_transformers(server: LlamaServer, tokenizer: Tokenizer,
                                                    tiny_model_dir: Path) -> None:
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        got = await post(server, "/completion", {
            "prompt": ids, "n_predict": 1, "n_probs": 10, "temperature": 0.0,
            "samplers": ["top_k", "temperature"], "top_k": 0, "post_sampling_probs": False})
        top = got["completion_probabilities"][0]["top_logprobs"]
        assert top[0]["id"] == int(expected.argmax())
        for entry in top:
            assert abs(entry["logprob"] - float(expected[entry["id"]])) < 1e-3, entry


async def test_detected_and_checked_at_start(remote: RemoteGenerator,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await remote.check()
    assert set(remote.kinds().values()) == {"llamacpp"}
    assert "(llama-server) serves tiny.gguf" in caplog.text
    assert "ids, our tokenizer" not in caplog.text and "context per slot" not in caplog.text
    assert remote._endpoints[0].slot_context == 2048


async def test_greedy_reply_has_the_local_engines_bytes(remote: RemoteGenerator,
                                                        generator: object) -> None:
    params = GenerationParams(do_sample=False, max_new_tokens=24)
    for prompt in PROMPTS:
        over_http = "".join([d async for d in remote.stream(prompt, params)])
        local = "".join([d async for d in generator.stream(prompt, params)])  # type: ignore[attr-defined]
        assert over_http == local, prompt


async def test_sampled_replies_in_a_row_on_connections_the_server_closes(
        remote: RemoteGenerator, caplog: pytest.LogCaptureFixture) -> None:
    for seed in range(4):
        text = "".join([d async for d in remote.stream(PROMPTS[0], GenerationParams(seed=seed))])
        assert "\ufffd" not in text
    assert remote._endpoints[0].failures == 0 and "skipping it" not in caplog.text
    again = [d async for d in remote.stream(PROMPTS[0], GenerationParams(seed=3))]
    assert "".join(again) == text  # the seed reached the server


async def test_cancel_frees_the_slot(remote: RemoteGenerator, server: LlamaServer) -> None:
    long = GenerationParams(max_new_tokens=1500, do_sample=False)
    stream = remote.stream(PROMPTS[0], long)
    await anext(stream)
    assert await slots_busy(server)
    await stream.aclose()
    deadline = time.monotonic() + 30
    while await slots_busy(server):  # the server's own state, asked until it changes
        assert time.monotonic() < deadline, "llama-server kept the slot after the client left"
    assert remote.running == 0


async def test_a_chat_through_engine_url(server: LlamaServer, tiny_model_dir: Path,
                                         tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "ENGINE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir),
                "DATABASE_PATH": str(tmp_path / "chat.sqlite3"), "ENGINE_URL": server.url,
                "ENGINE_MODEL": "tiny.gguf", "LOG_LEVEL": "INFO"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.service.cli", "chat", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(
        process.communicate("猫は何ですか?\n東京は?\n".encode()), timeout=180)
    log = stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert "remote: llamacpp" in log and "error" not in log.lower(), log[-3000:]
    assert stdout.decode().strip()
