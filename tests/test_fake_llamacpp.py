"""The fake llama-server (tests/fake_llamacpp.py) against a real one's recorded answers
(tests/fixtures/llamacpp/, recorded by tests/llamacpp/record.py from llama-server built from
the pinned llama.cpp): the same event fields, the same hold-back of ids inside a character,
the same end of a stream; and the remote engine's llama.cpp reader on the recorded bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.engine.remote_llamacpp import LlamaCppWire, server_info
from bot.engine.tokenizer import Tokenizer
from tests.fake_llamacpp import FakeLlamaServer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llamacpp"
PROMPT = "ユーザー: 猫は何ですか?<NL>システム: "


def recorded(name: str) -> list[dict]:
    raw = (FIXTURES / name).read_bytes().decode("utf-8")
    return [json.loads(block.removeprefix("data: ")) for block in raw.split("\n\n") if block]


async def fake_events(server: FakeLlamaServer, body: dict) -> tuple[list[dict], dict]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(server.url + "/completion",
                                                                  json=body) as response:
        raw = (await response.read()).decode("utf-8")
        headers = dict(response.headers)
    return [json.loads(b.removeprefix("data: ")) for b in raw.split("\n\n") if b], headers


def test_the_recorded_prompt_is_the_tiny_tokenizers(tokenizer: Tokenizer) -> None:
    meta = json.loads((FIXTURES / "models.json").read_text())
    info = server_info(meta)
    assert info.kind == "llamacpp" and info.vocab == tokenizer.vocab_size
    assert info.slot_context == 2048  # -np 2 -c 4096: 2048 per slot
    first = recorded("stream.txt")[0]
    assert first["tokens_evaluated"] == len(tokenizer.encode(PROMPT))


async def test_the_fake_streams_as_the_real_server(tokenizer: Tokenizer) -> None:
    real = recorded("stream.txt")
    ids = json.loads((FIXTURES / "stream-ids.json").read_text())  # unstreamed: every id
    assert len(ids) > len([e for e in real if not e["stop"]])  # the stream held one back
    server = await FakeLlamaServer(tokenizer, reply=lambda prompt: ids).start()
    try:
        fake, headers = await fake_events(server, {"prompt": tokenizer.encode(PROMPT),
                                                   "stream": True, "return_tokens": True,
                                                   "n_predict": len(ids)})
    finally:
        await server.close()
    assert [set(e) for e in fake if not e["stop"]][:1] == [set(e) for e in real if not e["stop"]][:1]
    assert set(fake[-1]) - {"timings"} <= set(real[-1]) and real[-1]["stop"] is fake[-1]["stop"]
    for key in ("tokens", "content", "tokens_predicted", "id_slot"):
        assert [e[key] for e in fake[:-1]] == [e[key] for e in real[:-1]], key
    assert fake[-1]["stop_type"] == real[-1]["stop_type"]
    real_headers = json.loads((FIXTURES / "stream-headers.json").read_text())
    assert real_headers["headers"]["Content-Type"].startswith("text/event-stream")
    assert headers["Content-Type"].startswith("text/event-stream")


@pytest.mark.parametrize("name", ["stream.txt", "stream-emoji.txt"])
def test_the_reader_recovers_every_id_from_real_streams(name: str, tokenizer: Tokenizer) -> None:
    events = recorded(name)
    ids = read_all(events, tokenizer)
    assert len(ids) == events[-1]["tokens_predicted"]
    if name == "stream.txt":  # an invalid byte (U+FFFD in the JSON) is the one id not known
        every = json.loads((FIXTURES / "stream-ids.json").read_text())
        differ = [i for i, (a, b) in enumerate(zip(ids, every)) if a != b]
        assert len(differ) == 1 and tokenizer.decode([every[differ[0]]]) == ""
    text = "".join(e["content"] for e in events)
    assert tokenizer.decode(ids) == text.replace("\ufffd", "")


def read_all(events: list[dict], tokenizer: Tokenizer) -> list[int]:
    wire = LlamaCppWire(tokenizer.eos_id, tokenizer.byte_piece_ids(), tokenizer.piece_bytes)
    ids: list[int] = []
    for event in events:
        ids += wire.read(event, not ids).tokens
    return ids
