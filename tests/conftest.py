"""Shared fixtures: the tiny model (built once per session), real SQLite files, the real
generator and chat service over them. No network: HF_HUB_OFFLINE is set before anything loads."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The terminal chat logs under the user's state directory: never the developer's own, in tests.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="rinna-bot-test-state-")

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.chat import ChatConfig, ChatService
from bot.config import Settings, load_settings
from bot.engine.generator import LocalGenerator, load_generator
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.discord_fakes import ScriptedGenerator as DiscordScript
from bot.engine.tiny_model import build_tiny_model

# A real PostgreSQL for the store's tests: `pg_cluster`, `pg_dsn` (tests/pg/fixtures.py).
pytest_plugins = ["tests.pg.fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(tiny_model_dir / "spiece.model")


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for the tiny model on CPU, unquantised (fast), with a fresh database file.
    Runs in an empty directory so no developer's `.env` leaks in."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.lower() in Settings.model_fields:
            monkeypatch.delenv(key)
    return load_settings(
        model_id=str(tiny_model_dir),
        quantization="fp32",  # as "none" meant on a CPU before bf16 became its choice
        device="cpu",
        database_path=tmp_path / "history.sqlite3",
        max_new_tokens=24,
        stream_interval_s=0.0,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[HistoryStore]:
    history = await HistoryStore.open(settings.database_path)
    yield history
    await history.close()


@pytest.fixture
async def generator(settings: Settings) -> AsyncIterator[LocalGenerator]:
    loaded = await load_generator(settings)
    yield loaded
    await loaded.aclose()


@pytest.fixture
async def chat(
    store: HistoryStore, generator: LocalGenerator, tokenizer: Tokenizer, settings: Settings
) -> ChatService:
    return ChatService(
        store, generator, tokenizer,
        ChatConfig(prompt_budget=settings.prompt_budget,
                   stream_interval_s=settings.stream_interval_s),
    )


@pytest.fixture
def script() -> DiscordScript:
    """The Discord tests' scripted generator (reply 「はい。」 unless told otherwise)."""
    return DiscordScript()


@pytest.fixture
def scripted(store: HistoryStore, script: DiscordScript, tokenizer: Tokenizer,
             settings: Settings) -> ChatService:
    """The real chat service over `script`, streaming every delta (no interval)."""
    return ChatService(store, script, tokenizer,
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0))
