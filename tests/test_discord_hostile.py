"""Hostile input on Discord: the patterns run on user text are linear, text is cut to
Discord's own limit before parsing, and a message seen already is not parsed again."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters import discord_cogs, discord_parse
from adapters.discord_bot import MAX_TEXT_CHARS
from bot.conversation import ConversationKey, Turn
from tests.discord_fakes import CHANNEL_ID, GUILD_ID, FakeDiscord, discord_bot
from tests.slack_fakes import eventually
from tests.test_discord_wire import fake_discord  # noqa: F401

N = 100_000


@pytest.mark.parametrize("text", [
    "<" * N, "<@" * (N // 2), "<@!" * (N // 3), "<#" + "1" * N, "<@&" + "9" * N,
    ("<@" + "1" * 20) * (N // 22), " \t" * (N // 2), "<" + " " * N + ">",
], ids=["lt", "at", "bang", "channel-digits", "role-digits", "ids", "blanks", "spaced"])
def test_patterns_are_linear_on_100k_adversarial_text(text: str) -> None:
    start = time.perf_counter()
    discord_parse._MENTION.sub(lambda m: "", text)
    discord_parse._SPACES.sub(" ", text)
    assert time.perf_counter() - start < 0.5  # a few ms when linear; generous for loaded CI


async def test_text_is_cut_to_discords_limit_before_parsing(
        fake_discord: FakeDiscord, scripted, settings, store, monkeypatch) -> None:  # noqa: F811
    """Over the wire (simcord itself refuses more than 2,000 characters from a user)."""
    seen: list[int] = []
    original = discord_parse._MENTION

    class Recording:
        def sub(self, replace, text):  # noqa: ANN001, ANN202
            seen.append(len(text))
            return original.sub(replace, text)

    monkeypatch.setattr(discord_parse, "_MENTION", Recording())
    bot = discord_bot(scripted, settings, guild_ready_timeout=0.05)
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake_discord.wait_for(lambda: bot.is_ready() or running.done())
        question = await fake_discord.user_says("あ" * (MAX_TEXT_CHARS * 3), mention_bot=True)
        key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(question))

        turns: list[Turn] = []

        async def user_turn_stored() -> bool:
            # The conversation row is written before the user turn: wait on the turn itself.
            conversation = await store.find(key)
            if conversation is None:
                return False
            turns[:] = [t.turn for t in reversed(await store.recent_turns(conversation, 10))]
            return bool(turns)

        await eventually(user_turn_stored)
        (first, *_) = turns
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)
    assert seen and max(seen) <= MAX_TEXT_CHARS
    assert 0 < len(first.text) <= MAX_TEXT_CHARS


async def test_a_message_delivered_twice_is_parsed_and_answered_once(
        fake_discord: FakeDiscord, scripted, script, settings, monkeypatch) -> None:  # noqa: F811
    parsed: list[str] = []
    original = discord_cogs.readable_text

    def counting(message, me_id):  # noqa: ANN001, ANN202
        parsed.append(message.content)
        return original(message, me_id)

    monkeypatch.setattr(discord_cogs, "readable_text", counting)
    bot = discord_bot(scripted, settings, guild_ready_timeout=0.05)
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake_discord.wait_for(lambda: bot.is_ready() or running.done())
        question = await fake_discord.user_says("一度だけ", mention_bot=True)
        await fake_discord._dispatch("MESSAGE_CREATE", fake_discord.messages[question])
        await fake_discord.wait_for(lambda: len(script.prompts) >= 1)
        await fake_discord.user_says("次の質問", mention_bot=True)  # later ones still pass
        await fake_discord.wait_for(lambda: len(script.prompts) >= 2)
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)
    assert len(script.prompts) == 2
    assert [text.endswith("一度だけ") for text in parsed] == [True, False]
