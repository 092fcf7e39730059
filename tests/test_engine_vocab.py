"""`doctor` with ENGINE_URL: the engine's tokenizer (vLLM's POST /tokenize on the local fake
OpenAI server, real HTTP) against MODEL_ID's spiece.model; a different vocabulary is a ✗."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.config import Settings
from bot.service.doctor_model import engine_vocabulary
from bot.engine.tokenizer import Tokenizer
from tests.fake_openai import FakeOpenAI
from tests.tiny_model import build_tokenizer


async def test_the_engines_vocabulary_is_compared(settings: Settings, tokenizer: Tokenizer,
                                                  tiny_model_dir: Path, tmp_path: Path) -> None:
    spiece = tiny_model_dir / "spiece.model"
    other = Tokenizer.from_file(build_tokenizer(tmp_path, seed=5))
    for tokenize_with, ok in [(None, True), (other, False)]:
        fake = await FakeOpenAI(tokenizer, tokenize_with=tokenize_with).start()
        try:
            remote = settings.model_copy(update={"engine_url": fake.url,
                                                 "engine_model": fake.model})
            check = await asyncio.to_thread(engine_vocabulary, remote, fake.url, spiece)
        finally:
            await fake.close()
        assert check.ok is ok, check
        if ok:
            assert check.line() == (f"✓ vocabulary: engine {fake.url} tokenizes like "
                                    f"{settings.model_id}'s spiece.model")
        else:
            assert check.line().startswith(f"✗ vocabulary: engine {fake.url} (rinna-test) "
                                           "tokenizes differently from ")
            assert "→ serve rinna/japanese-gpt-neox-3.6b-instruction-ppo in vLLM" in check.line()


async def test_an_engine_without_tokenize_is_not_compared(settings: Settings,
                                                          tiny_model_dir: Path) -> None:
    check = await asyncio.to_thread(engine_vocabulary, settings, "http://127.0.0.1:9/v1",
                                    tiny_model_dir / "spiece.model")
    assert check.ok and "not compared" in check.what
