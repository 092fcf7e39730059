"""Who may use the bot on Discord, through simcord (offline discord.py) with the real chat
service: each access setting lets the allowed through and refuses the rest silently (no reply,
no typing, nothing stored); refused commands are told 「利用できません」 ephemerally; a server
not in ALLOWED_WORKSPACES is left, on joining it and at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import discord
import simcord

from adapters.discord_bot import build_discord_bot
from bot.core.access import DENIED_MESSAGE
from bot.core.chat import ChatService
from bot.config import Settings
from bot.conversation import ConversationKey
from storage.history import HistoryStore


def configured(settings: Settings, **access: Any) -> Settings:
    return settings.model_copy(update={
        k: frozenset(str(i) for i in v) if isinstance(v, (set, list)) else v
        for k, v in access.items()})


@asynccontextmanager
async def running(chat: ChatService, settings: Settings) -> AsyncIterator[simcord.Env]:
    async with simcord.run(build_discord_bot(chat, settings), settle_timeout=30) as env:
        yield env


def bot_posts(env: simcord.Env, channel: simcord.ChannelHandle) -> list[str]:
    return [m.content for m in channel.history()
            if m.author.id == env.bot.user.id and m.type == discord.MessageType.default]


def untouched(env: simcord.Env, start: int) -> None:
    """No request to Discord since `start` (no reply, no thread, no typing)."""
    assert env.http_requests[start:] == [], env.http_requests[start:]


async def nothing_stored(store: HistoryStore, *keys: ConversationKey) -> None:
    for key in keys:
        assert await store.find(key) is None, key


def world(env: simcord.Env) -> tuple[simcord.GuildHandle, simcord.ChannelHandle]:
    guild = env.create_guild()
    return guild, guild.create_text_channel("general")


async def test_allowed_users_and_roles_either_admits(scripted, settings, store, script) -> None:
    async with running(scripted, settings) as env:
        guild, channel = world(env)
        helper = guild.create_role("helpers")
        alice = guild.add_member(env.create_user("alice"))
        bob = guild.add_member(env.create_user("bob"), roles=[helper])
        carol = guild.add_member(env.create_user("carol"))
        await env.restart_bot(build_discord_bot(scripted, configured(
            settings, allowed_users=[alice.id], allowed_roles=[helper.id])))
        start = len(env.http_requests)

        refused = await carol.send(channel, f"{env.bot.user.mention} 質問")
        untouched(env, start)
        await nothing_stored(store, ConversationKey(
            "discord", str(guild.id), str(channel.id), str(refused.id)))
        await alice.send(channel, f"{env.bot.user.mention} ユーザーとして")
        await bob.send(channel, f"{env.bot.user.mention} ロールで")
        assert len(channel.threads) == 2 and len(script.prompts) == 2


async def test_blocked_user_is_never_answered(scripted, settings, store, script) -> None:
    async with running(scripted, settings) as env:
        guild, channel = world(env)
        alice = guild.add_member(env.create_user("alice"))
        mallory = guild.add_member(env.create_user("mallory"))
        await env.restart_bot(build_discord_bot(scripted, configured(
            settings, blocked_users=[mallory.id], allowed_users=[alice.id, mallory.id])))
        question = await alice.send(channel, f"{env.bot.user.mention} 質問")
        (thread,) = channel.threads
        start = len(env.http_requests)

        await mallory.send(thread, "割り込み")  # a followed thread: would need no mention
        await mallory.send(thread, f"{env.bot.user.mention} 割り込み")
        dm = await mallory.send_dm("DMでも")

        untouched(env, start)
        key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
        conversation = await store.find(key)
        turns = [t.turn.text for t in await store.recent_turns(conversation, 10)]
        assert "割り込み" not in turns and len(script.prompts) == 1
        await nothing_stored(store, ConversationKey("discord", "", str(dm.channel.id)))


async def test_allowed_channels_thread_counts_as_its_parent(scripted, settings, store,
                                                            script) -> None:
    async with running(scripted, settings) as env:
        guild, channel = world(env)
        other = guild.create_text_channel("random")
        alice = guild.add_member(env.create_user("alice"))
        await env.restart_bot(build_discord_bot(scripted, configured(
            settings, allowed_channels=[channel.id])))
        start = len(env.http_requests)

        refused = await alice.send(other, f"{env.bot.user.mention} 別のチャンネル")
        untouched(env, start)
        await nothing_stored(store, ConversationKey(
            "discord", str(guild.id), str(other.id), str(refused.id)))
        await alice.send(channel, f"{env.bot.user.mention} 質問")
        (thread,) = channel.threads
        await alice.send(thread, "スレッドの続き")
        assert len(script.prompts) == 2 and len(bot_posts(env, thread)) == 2


async def test_dms_can_be_switched_off(scripted, settings, store, script) -> None:
    async with running(scripted, configured(settings, allow_dms=False)) as env:
        dave = env.create_user("dave")
        start = len(env.http_requests)
        await dave.send_dm("こんにちは")
        untouched(env, start)
        await nothing_stored(store, ConversationKey("discord", "", str(dave.dm_channel.id)))
        result = await dave.slash("ask", 質問="DMで")
        assert result.response.ephemeral and "利用できません" in result.response.content
        assert script.prompts == []


async def test_refused_commands_are_told_ephemerally_and_post_nothing(
        scripted, settings, store, script) -> None:
    async with running(scripted, settings) as env:
        guild, channel = world(env)
        alice = guild.add_member(env.create_user("alice"))
        await env.restart_bot(build_discord_bot(scripted, configured(
            settings, allowed_users=["1"])))
        for name, options in (("ask", {"質問": "質問です"}), ("reset", {}), ("help", {})):
            result = await alice.slash(channel, name, **options)
            assert result.response.ephemeral, name
            assert result.response.content == DENIED_MESSAGE
        assert channel.threads == [] and bot_posts(env, channel) == []
        assert script.prompts == []


async def test_a_server_not_listed_is_left_on_joining_and_at_start_up(
        scripted, settings, caplog) -> None:
    async with running(scripted, settings) as env:
        kept = env.create_guild("kept")
        stale = env.create_guild("stale")  # joined while everything was allowed
        await env.restart_bot(build_discord_bot(scripted, configured(
            settings, allowed_workspaces=[kept.id])))
        joined = env.create_guild("newcomer")
        await env.settle()

        left = {int(e.path.rsplit("/", 1)[1]) for e in env.http_requests
                if e.method == "DELETE" and e.path.startswith("/users/@me/guilds/")}
        assert left == {stale.id, joined.id}
        assert {g.id for g in env.bot.guilds} == {kept.id}
        assert "at start-up" in caplog.text and "on joining" in caplog.text
        assert str(stale.id) in caplog.text and str(joined.id) in caplog.text
