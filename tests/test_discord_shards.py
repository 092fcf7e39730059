"""Discord past one gateway: DISCORD_SHARD_COUNT / DISCORD_SHARD_IDS start discord.py's
AutoShardedClient, which identifies once per shard this replica runs, against the local fake
gateway (tests/discord_fakes.py routes a server's events to its shard, as Discord does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from adapters.discord_bot import RinnaDiscordBot, ShardedRinnaDiscordBot, build_discord_bot
from bot.config import Settings, load_settings
from bot.core.chat import ChatService
from bot.core.front_door import FrontDoor
from bot.errors import ConfigError
from tests.discord_fakes import GUILD_ID, FakeDiscord
from tests.test_discord_wire import final_answer


@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    yield fake
    await fake.close()


def sharded(settings: Settings, **shards: object) -> Settings:
    return load_settings(**{**settings.model_dump(exclude_unset=True), **shards})


def test_shard_settings_are_read_and_checked(settings: Settings) -> None:
    both = sharded(settings, discord_shard_count="4", discord_shard_ids="3, 1")
    assert both.discord_shard_count == 4 and both.discord_shard_ids == (1, 3)
    assert sharded(settings, discord_shard_count=2).discord_shard_ids == ()
    with pytest.raises(ConfigError, match="DISCORD_SHARD_COUNT is not"):
        sharded(settings, discord_shard_ids="0")
    with pytest.raises(ConfigError, match="shard 2 does not exist with DISCORD_SHARD_COUNT=2"):
        sharded(settings, discord_shard_count=2, discord_shard_ids="0,2")
    with pytest.raises(ConfigError, match="DISCORD_SHARD_IDS=a,1: must be shard numbers"):
        sharded(settings, discord_shard_count=2, discord_shard_ids="a,1")


def test_unsharded_settings_build_the_one_gateway_client(chat: ChatService,
                                                         settings: Settings) -> None:
    bot = build_discord_bot(FrontDoor.from_settings(chat, settings), settings)
    assert type(bot) is RinnaDiscordBot


async def test_a_replica_identifies_with_its_own_shards_and_answers_on_them(
        fake_discord: FakeDiscord, chat: ChatService, settings: Settings) -> None:
    fake = fake_discord
    # The test server lives on shard (GUILD_ID >> 22) % 4 == 3; shard 1 carries no server.
    assert (GUILD_ID >> 22) % 4 == 3
    mine = sharded(settings, discord_shard_count=4, discord_shard_ids="1,3")
    bot = build_discord_bot(FrontDoor.from_settings(chat, mine), mine,
                            guild_ready_timeout=0.05)
    assert isinstance(bot, ShardedRinnaDiscordBot)
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake.wait_for(lambda: (bot.is_ready() and bot.connected) or running.done(),
                            timeout=60)
        assert bot.is_ready(), running
        assert [identify["shard"] for identify in fake.identifies] == [[1, 4], [3, 4]]
        assert sorted(bot.shards) == [1, 3]
        assert bot.get_guild(GUILD_ID) is not None
        question_id = await fake.user_says("富士山の高さは?", mention_bot=True)
        assert await fake.wait_for(lambda: final_answer(fake, question_id))
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)
    assert not bot.connected
