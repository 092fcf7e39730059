"""The Discord adapter's main flows in simcord (offline discord.py), over the REAL chat
service and tiny-model generator: random weights, so the tests assert shapes, not wording."""

from __future__ import annotations

import discord
import pytest
import simcord

from adapters.discord_bot import (
    HELP_MESSAGE,
    RESET_DONE,
    RESET_WHERE,
    ChatCog,
    RinnaDiscordBot,
    build_discord_bot,
    conversation_key,
    thread_name,
)
from bot.core.chat import ChatService
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.core.reply import PLACEHOLDER
from storage.history import HistoryStore

pytestmark = pytest.mark.simcord(settle_timeout=60)


@pytest.fixture
def simcord_bot(chat: ChatService, settings: Settings) -> RinnaDiscordBot:
    return build_discord_bot(chat, settings)


async def stored(store: HistoryStore, key: ConversationKey) -> list[tuple[Speaker, str]]:
    conversation = await store.find(key)
    assert conversation is not None, f"no conversation stored for {key}"
    turns = await store.recent_turns(conversation, 100)
    return [(t.turn.speaker, t.turn.text) for t in reversed(turns)]


def questions(turns: list[tuple[Speaker, str]]) -> list[str]:
    """The user turns, checking that each is followed by at most one answer. (Random weights
    can, rarely, produce an empty answer: then the bot says so and stores no システム turn.)"""
    speakers = "".join("U" if s == Speaker.USER else "S" for s, _ in turns)
    assert "SS" not in speakers and not speakers.startswith("S"), speakers
    return [text for s, text in turns if s == Speaker.USER]


def bot_messages(channel: simcord.ChannelHandle, env: simcord.Env) -> list[discord.Message]:
    """The bot's own posts (not Discord's "started a thread" notices)."""
    return [m for m in channel.history()
            if m.author.id == env.bot.user.id and m.type == discord.MessageType.default]


def assert_answer(messages: list[discord.Message]) -> None:
    assert messages, "the bot posted nothing"
    for message in messages:
        assert message.content and message.content != PLACEHOLDER
        assert len(message.content) <= 2000
        assert not message.content.endswith(" …"), "a preview was left instead of the answer"


async def test_factory_builds_the_bot_without_connecting(chat: ChatService,
                                                         settings: Settings) -> None:
    bot = build_discord_bot(chat, settings)
    assert isinstance(bot, RinnaDiscordBot)
    assert bot.chat is chat and bot.settings is settings
    assert bot.intents.message_content and bot.intents.guild_messages and bot.intents.dm_messages
    assert not bot.is_ready() and bot.user is None
    assert bot.get_cog("ChatCog") is None  # added in setup_hook, not at construction


async def test_commands_synced_in_setup_hook(simcord_env: simcord.Env) -> None:
    assert isinstance(simcord_env.bot.get_cog("ChatCog"), ChatCog)
    synced = [e for e in simcord_env.http_requests
              if e.method == "PUT" and e.path.endswith("/commands")]
    assert len(synced) == 1
    assert {(c["name"], c.get("type", 1)) for c in synced[0].json} == {
        ("ask", 1), ("reset", 1), ("help", 1), ("status", 1), ("summary", 1), ("rinna-config", 1),
        ("rinna に聞く", 3), ("要約", 3)}  # 3: a message context menu


async def test_mention_opens_a_thread_and_answers_there(simcord_env: simcord.Env,
                                                        store: HistoryStore) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))

    question = await alice.send(channel, f"{env.bot.user.mention} 日本で一番高い山は?")

    (thread,) = channel.threads
    assert thread.id == question.id  # a thread opened on the question itself
    assert thread.name == "日本で一番高い山は?"
    assert_answer(bot_messages(thread, env))
    assert bot_messages(channel, env) == []  # nothing posted in the channel itself
    assert any(e.path == f"/channels/{thread.id}/typing" for e in env.http_requests)
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(thread.id))
    turns = await stored(store, key)
    assert questions(turns) == ["日本で一番高い山は?"]  # the bot's mention stripped
    if len(turns) == 2:
        assert bot_messages(thread, env)[0].content == turns[1][1]


async def test_follow_up_in_the_thread_needs_no_mention(simcord_env: simcord.Env,
                                                        store: HistoryStore) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    question = await alice.send(channel, f"{env.bot.user.mention} 富士山について")
    (thread,) = channel.threads
    answers_before = len(bot_messages(thread, env))

    await alice.send(thread, "もっと詳しく教えて")

    assert len(bot_messages(thread, env)) > answers_before
    assert_answer(bot_messages(thread, env))
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
    assert questions(await stored(store, key)) == ["富士山について", "もっと詳しく教えて"]


async def test_channel_messages_without_mention_and_from_bots_are_ignored(
        simcord_env: simcord.Env) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    other_bot = guild.add_member(env.create_user("otherbot", bot=True))

    await alice.send(channel, "今日はいい天気")
    await other_bot.send(channel, f"{env.bot.user.mention} 質問です")
    await alice.send(channel, "@everyone こんにちは")

    assert channel.threads == []
    assert bot_messages(channel, env) == []
    assert not any(e.method in ("POST", "PATCH") and "/channels/" in e.path
                   for e in env.http_requests)


async def test_mentions_of_other_people_become_display_names(simcord_env: simcord.Env,
                                                             store: HistoryStore) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    bob = guild.add_member(env.create_user("bob", global_name="ボブ"))

    question = await alice.send(channel, f"{env.bot.user.mention} {bob.mention} の誕生日は?")

    key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
    assert questions(await stored(store, key)) == ["@ボブ の誕生日は?"]


async def test_dm_is_one_conversation(simcord_env: simcord.Env, store: HistoryStore) -> None:
    env = simcord_env
    user = env.create_user("carol")

    await user.send_dm("こんにちは")
    await user.send_dm("元気ですか")

    dm = user.dm_channel
    assert_answer(bot_messages(dm, env))
    key = ConversationKey("discord", "", str(dm.id), "")
    assert questions(await stored(store, key)) == ["こんにちは", "元気ですか"]


async def test_ask_defers_answers_in_the_channel_and_opens_a_thread(
        simcord_env: simcord.Env, store: HistoryStore) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))

    before = len(env.http_requests)
    result = await alice.slash(channel, "ask", 質問="日本の首都はどこ?")

    first = env.http_requests[before]  # deferred at once, before any other call
    assert first.path.startswith("/interactions/") and first.json["type"] == 5
    assert result.acknowledged and not result.ephemeral
    answer = result.response
    assert answer is not None and answer.channel_id == channel.id
    assert answer.content and answer.content != PLACEHOLDER
    (thread,) = channel.threads
    assert thread.id == answer.id and thread.name == "日本の首都はどこ?"
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(thread.id))
    assert questions(await stored(store, key)) == ["日本の首都はどこ?"]

    await alice.send(thread, "人口は?")  # the follow-up continues the /ask conversation

    assert_answer(bot_messages(thread, env))
    assert questions(await stored(store, key)) == ["日本の首都はどこ?", "人口は?"]


async def test_reset_starts_the_thread_afresh_and_keeps_old_turns(
        simcord_env: simcord.Env, store: HistoryStore) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    question = await alice.send(channel, f"{env.bot.user.mention} しりとりしよう")
    (thread,) = channel.threads
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(thread.id))

    result = await alice.slash(thread, "reset")

    assert result.response is not None and result.response.content == RESET_DONE
    assert await stored(store, key) == []  # no longer in the prompt
    conversation = await store.find(key)
    assert await store.seen("discord", str(question.id))  # the old rows are still there
    await alice.send(thread, "新しい話題です")
    assert questions(await stored(store, key)) == ["新しい話題です"]
    assert await store.find(key) == conversation


async def test_reset_in_a_channel_explains_where_to_use_it(simcord_env: simcord.Env) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))

    result = await alice.slash(channel, "reset")

    assert result.ephemeral and result.response.content == RESET_WHERE


async def test_help_is_ephemeral(simcord_env: simcord.Env) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))

    result = await alice.slash(channel, "help")

    assert result.ephemeral and result.response.content == HELP_MESSAGE
    assert "/ask" in HELP_MESSAGE and "/reset" in HELP_MESSAGE


def test_thread_name_is_short_and_never_empty() -> None:
    assert thread_name("  日本で\n一番高い山は?  ") == "日本で 一番高い山は?"
    assert len(thread_name("あ" * 500)) <= 50
    assert thread_name("   ") == "rinna との会話"


def test_conversation_key_of_a_dm_has_no_workspace() -> None:
    class Channel:
        id = 42
    assert conversation_key(Channel(), None) == ConversationKey("discord", "", "42", "")
    assert conversation_key(Channel(), 7) == ConversationKey("discord", "7", "42", "")
