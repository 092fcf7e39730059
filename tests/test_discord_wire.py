"""Wire test: the bot `rinna-bot run` would start, over a real `bot.start()`, against a local fake
of Discord's REST API and gateway on 127.0.0.1 (no network), with the real chat service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from adapters.discord_bot import build_discord_bot
from bot.core.chat import ChatService
from bot.config import Settings
from bot.errors import ConfigError
from bot.conversation import ConversationKey, Speaker
from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from storage.history import HistoryStore
from tests.discord_fakes import APP_ID, CHANNEL_ID, GUILD_ID, FakeDiscord


@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    yield fake
    await fake.close()


def final_answer(fake: FakeDiscord, thread_id: int) -> str | None:
    for message in fake.posted_in(thread_id):
        content = message["content"]
        if content != PLACEHOLDER and not content.endswith(PREVIEW_TAIL):
            return content
    return None


async def test_start_logs_in_receives_a_mention_and_posts_the_answer(
        fake_discord: FakeDiscord, chat: ChatService, settings: Settings,
        store: HistoryStore) -> None:
    fake = fake_discord
    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake.wait_for(lambda: bot.is_ready() or running.done())
        assert bot.is_ready(), running
        assert fake.identify["intents"] & discord.Intents(message_content=True).value
        assert [r.path for r in fake.requests[:3]] == [
            "/users/@me", "/oauth2/applications/@me", f"/applications/{APP_ID}/commands"]

        question_id = await fake.user_says("日本で一番高い山は?", mention_bot=True)
        answer = await fake.wait_for(lambda: final_answer(fake, question_id))

        calls = [(r.method, r.path) for r in fake.requests]
        assert ("POST", f"/channels/{CHANNEL_ID}/messages/{question_id}/threads") in calls
        assert ("POST", f"/channels/{question_id}/typing") in calls
        assert fake.requests[calls.index(("POST", f"/channels/{question_id}/messages"))].body[
            "content"] == PLACEHOLDER
        key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(question_id))
        conversation = await store.find(key)
        turns = [(t.turn.speaker, t.turn.text)
                 for t in reversed(await store.recent_turns(conversation, 10))]
        assert turns[0] == (Speaker.USER, "日本で一番高い山は?")
        if len(turns) > 1:  # random weights may, rarely, give an empty answer (none stored)
            assert turns[1][0] == Speaker.SYSTEM and answer == turns[1][1]
        assert not running.done()
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)
    assert bot.is_closed()


async def test_a_rejected_token_ends_start_with_one_clear_error(
        fake_discord: FakeDiscord, chat: ChatService, settings: Settings) -> None:
    fake_discord.reject_token = True
    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        await asyncio.wait_for(bot.start("wrong-token"), timeout=30)
    await bot.close()


async def test_a_start_without_network_ends_with_one_line(
        monkeypatch: pytest.MonkeyPatch, chat: ChatService, settings: Settings) -> None:
    """Nothing listens where Discord should be (no network, DNS or proxy down): start ends with
    one RinnaError line, which `rinna-bot run` prints, instead of a 75-line traceback."""
    import socket

    from bot.errors import RinnaError

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    with pytest.raises(RinnaError) as raised:
        await asyncio.wait_for(bot.start("fake-token"), timeout=30)
    await bot.close()
    message = str(raised.value)
    assert "Discord" in message and "\n" not in message
    assert "fake-token" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
