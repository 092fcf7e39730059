"""The Discord adapter in simcord with a scripted generator: exact replies, long replies,
failures, Discord errors, joining a thread mid-way."""

from __future__ import annotations

import discord
import pytest
import simcord
from simcord.enums import MessageType

from adapters.discord_bot import RESET_DONE, RinnaDiscordBot, build_discord_bot
from bot.core.chat import USAGE_MESSAGE, ChatService
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.errors import GenerationTimeout, GeneratorError, QueueFullError
from bot.core.reply import PLACEHOLDER
from storage.history import HistoryStore
from tests.discord_fakes import ScriptedGenerator, sentences

pytestmark = pytest.mark.simcord(settle_timeout=30)


@pytest.fixture
def simcord_bot(scripted: ChatService, settings: Settings) -> RinnaDiscordBot:
    return build_discord_bot(scripted, settings)


@pytest.fixture
def world(simcord_env: simcord.Env) -> tuple[simcord.GuildHandle, simcord.ChannelHandle,
                                             simcord.MemberActor]:
    guild = simcord_env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(simcord_env.create_user("alice"))
    return guild, channel, alice


def posts(channel: simcord.ChannelHandle, env: simcord.Env) -> list[str]:
    return [m.content for m in channel.history()
            if m.author.id == env.bot.user.id and m.type == discord.MessageType.default]


async def stored(store: HistoryStore, key: ConversationKey) -> list[tuple[Speaker, str]]:
    conversation = await store.find(key)
    assert conversation is not None
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 100))]


async def test_long_reply_is_split_at_sentence_ends_outside_code(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    _, channel, alice = world
    code = "```python\n" + "\n".join(f"print({i})  # 説明。" for i in range(60)) + "\n```"
    reply = sentences(1900) + "\n" + code + "\n" + sentences(1500)
    script.replies.append(reply)

    await alice.send(channel, f"{simcord_env.bot.user.mention} 長く説明して")

    (thread,) = channel.threads
    pieces = posts(thread, simcord_env)
    assert len(pieces) >= 3
    assert all(len(p) <= 2000 for p in pieces)
    assert all(p.count("```") % 2 == 0 for p in pieces)  # no piece cuts a code block open
    assert all(p.endswith(("。", "```")) for p in pieces)
    assert "".join(pieces).replace("\n", "") == reply.replace("\n", "")


async def test_only_a_mention_gets_a_usage_hint_in_the_channel(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    _, channel, alice = world

    await alice.send(channel, f"{simcord_env.bot.user.mention}   ")

    assert channel.threads == []
    assert posts(channel, simcord_env) == [USAGE_MESSAGE]
    assert script.prompts == []


@pytest.mark.parametrize("error", [GeneratorError(), GenerationTimeout(), QueueFullError()])
async def test_generation_failure_ends_the_placeholder_with_a_japanese_message(
        simcord_env: simcord.Env, world, script: ScriptedGenerator, store: HistoryStore,
        error: GeneratorError) -> None:
    guild, channel, alice = world
    script.replies.append(error)

    question = await alice.send(channel, f"{simcord_env.bot.user.mention} こんにちは")

    (thread,) = channel.threads
    assert posts(thread, simcord_env) == [error.user_message]
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
    assert await stored(store, key) == [(Speaker.USER, "こんにちは")]  # user turn kept


async def test_a_5xx_on_send_does_not_lose_the_turn(
        simcord_env: simcord.Env, world, script: ScriptedGenerator, store: HistoryStore) -> None:
    guild, channel, alice = world
    script.replies.append("富士山です。")
    simcord_env.inject_error("POST", "/channels/*/messages", status=503, times=1)

    question = await alice.send(channel, f"{simcord_env.bot.user.mention} 一番高い山は?")

    (thread,) = channel.threads
    assert posts(thread, simcord_env) == ["富士山です。"]  # the placeholder failed, not the answer
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
    assert await stored(store, key) == [(Speaker.USER, "一番高い山は?"),
                                        (Speaker.SYSTEM, "富士山です。")]
    assert simcord_env.errors == []


async def test_discord_refusing_every_post_is_logged_and_turns_are_kept(
        simcord_env: simcord.Env, world, script: ScriptedGenerator, store: HistoryStore,
        caplog: pytest.LogCaptureFixture) -> None:
    guild, channel, alice = world
    script.replies.append("答えです。")
    simcord_env.inject_error("POST", "/channels/*/messages", status=403, code=50013,
                             message="Missing Permissions", times=None)

    question = await alice.send(channel, f"{simcord_env.bot.user.mention} 質問")

    key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
    assert await stored(store, key) == [(Speaker.USER, "質問"), (Speaker.SYSTEM, "答えです。")]
    assert "could not post reply" in caplog.text
    assert simcord_env.errors == []


async def test_without_thread_permission_the_answer_goes_to_the_channel(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    _, channel, alice = world
    script.replies.append("ここで答えます。")
    simcord_env.inject_error("POST", "/channels/*/messages/*/threads", status=403, code=50013,
                             message="Missing Permissions")

    await alice.send(channel, f"{simcord_env.bot.user.mention} 質問")

    assert channel.threads == []
    assert posts(channel, simcord_env) == ["ここで答えます。"]


async def test_mention_in_someone_elses_thread_reads_its_history_first(
        simcord_env: simcord.Env, world, script: ScriptedGenerator, store: HistoryStore) -> None:
    env = simcord_env
    guild, channel, alice = world
    bob = guild.add_member(env.create_user("bob"))
    thread = simcord.ChannelHandle(
        env, guild, env.backend.create_thread(channel.id, "雑談", alice.id))
    await alice.send(thread, "週末に山へ行きます")
    await bob.send(thread, "どの山ですか?")
    env.backend.create_message(thread.id, env.bot.user.id, "以前の回答です。")  # an old answer
    await alice.send(thread, "高尾山です")
    assert posts(thread, env) == ["以前の回答です。"]  # nothing answered without a mention
    script.replies.append("高尾山はいいですね。")

    await bob.send(thread, f"{env.bot.user.mention} 何を持っていけばいい?")

    key = ConversationKey("discord", str(guild.id), str(channel.id), str(thread.id))
    assert await stored(store, key) == [
        (Speaker.USER, "週末に山へ行きます"),
        (Speaker.USER, "どの山ですか?"),
        (Speaker.SYSTEM, "以前の回答です。"),
        (Speaker.USER, "高尾山です"),
        (Speaker.USER, "何を持っていけばいい?"),
        (Speaker.SYSTEM, "高尾山はいいですね。"),
    ]
    assert "週末に山へ行きます" in script.prompts[-1]

    await alice.send(thread, "ありがとう")  # from now on the thread is followed

    assert len(script.prompts) == 2 and posts(thread, env)[-1] == "はい。"


async def test_history_import_stops_at_the_context_budget(
        simcord_env: simcord.Env, world, script: ScriptedGenerator, store: HistoryStore,
        settings: Settings) -> None:
    env = simcord_env
    guild, channel, alice = world
    thread = simcord.ChannelHandle(
        env, guild, env.backend.create_thread(channel.id, "長い雑談", alice.id))
    for i in range(40):
        env.backend.create_message(thread.id, alice.id, f"{i}番目の話。" + sentences(150))

    await alice.send(thread, f"{env.bot.user.mention} まとめて")

    key = ConversationKey("discord", str(guild.id), str(channel.id), str(thread.id))
    turns = await stored(store, key)
    assert 1 < len(turns) - 2 < 40  # some, not all, earlier messages were imported
    assert turns[-3][1].startswith("39番目")  # the newest ones
    assert turns[-2] == (Speaker.USER, "まとめて")


async def test_system_messages_and_edits_of_older_messages_are_not_answered(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    """(An edit of the newest question is answered again: tests/test_discord_attachments.py.
    An edit of an older one only changes the stored history.)"""
    env = simcord_env
    guild, channel, alice = world
    first = await alice.send(channel, f"{env.bot.user.mention} 最初の質問")
    (thread,) = channel.threads
    await alice.send(thread, "続きの質問")
    assert len(script.prompts) == 2

    guild.create_system_message(thread, MessageType.CHANNEL_NAME_CHANGE, author=alice)
    await env.settle()
    await alice.edit(first, f"{env.bot.user.mention} 編集した質問")

    assert len(script.prompts) == 2
    assert len(posts(thread, env)) == 2


async def test_reset_drops_old_turns_from_the_prompt(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    _, channel, alice = world
    await alice.send(channel, f"{simcord_env.bot.user.mention} 古い話題")
    (thread,) = channel.threads

    await alice.slash(thread, "reset")
    await alice.send(thread, "新しい話題")

    assert "古い話題" in script.prompts[0]
    assert "古い話題" not in script.prompts[-1] and "新しい話題" in script.prompts[-1]


async def test_reset_in_a_dm(simcord_env: simcord.Env, script: ScriptedGenerator) -> None:
    user = simcord_env.create_user("dave")
    await user.send_dm("覚えておいて: 青")

    result = await user.slash("reset")
    await user.send_dm("何色?")

    assert result.response.content == RESET_DONE
    assert "青" not in script.prompts[-1]


async def test_ask_in_a_thread_answers_there_without_a_new_thread(
        simcord_env: simcord.Env, world, script: ScriptedGenerator, store: HistoryStore) -> None:
    guild, channel, alice = world
    question = await alice.send(channel, f"{simcord_env.bot.user.mention} 最初の質問")
    (thread,) = channel.threads
    script.replies.append("スレッドでの回答です。")

    result = await alice.slash(thread, "ask", 質問="二つ目")

    assert result.response.content == "スレッドでの回答です。"
    assert result.response.channel_id == thread.id
    assert len(channel.threads) == 1
    key = ConversationKey("discord", str(guild.id), str(channel.id), str(question.id))
    assert [text for _, text in await stored(store, key)][-2:] == ["二つ目", "スレッドでの回答です。"]


async def test_long_ask_answer_continues_in_its_thread(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    _, channel, alice = world
    script.replies.append(sentences(4500))

    result = await alice.slash(channel, "ask", 質問="長く")

    (thread,) = channel.threads
    assert len(result.response.content) <= 2000
    rest = posts(thread, simcord_env)
    assert len(rest) == 2 and all(len(p) <= 2000 for p in rest)
    assert result.response.content + "".join(rest) == sentences(4500)


async def test_ask_in_a_dm(simcord_env: simcord.Env, script: ScriptedGenerator) -> None:
    user = simcord_env.create_user("erin")
    script.replies.append("DMでの回答です。")

    result = await user.slash("ask", 質問="こんにちは")

    assert result.response.content == "DMでの回答です。"
    assert result.response.channel_id == user.dm_channel.id


async def test_a_deleted_placeholder_is_replaced_by_a_new_message(
        simcord_env: simcord.Env, world, script: ScriptedGenerator) -> None:
    _, channel, alice = world
    script.replies.append("最終回答です。")
    simcord_env.inject_error("PATCH", "/channels/*/messages/*", status=404, code=10008,
                             message="Unknown Message", times=None)

    await alice.send(channel, f"{simcord_env.bot.user.mention} 質問")

    (thread,) = channel.threads
    assert posts(thread, simcord_env) == [PLACEHOLDER, "最終回答です。"]


async def test_without_the_message_content_intent_mentions_still_work(
        scripted: ChatService, settings: Settings, script: ScriptedGenerator) -> None:
    bot = build_discord_bot(scripted, settings, message_content=False)
    assert not bot.intents.message_content
    async with simcord.run(bot, settle_timeout=30,
                           approved_intents=discord.Intents.default()) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))
        await alice.send(channel, f"{env.bot.user.mention} 質問です")
        (thread,) = channel.threads

        await alice.send(thread, "メンションなしの続き")  # Discord hides its text from the bot
        assert "CENSORED" in env.transcript()
        assert len(script.prompts) == 1 and len(posts(thread, env)) == 1  # no usage-hint spam

        await alice.send(thread, f"{env.bot.user.mention} メンション付きの続き")
        assert len(script.prompts) == 2 and "メンション付きの続き" in script.prompts[-1]
        user = env.create_user("dm-user")
        await user.send_dm("DMは読めます")
        assert "DMは読めます" in script.prompts[-1]


async def test_network_errors_while_replying_are_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    """discord.py lets some network failures through as aiohttp / timeout errors: a reply that
    meets one logs it and carries on, so the chat service never loses the turn over it."""
    import aiohttp

    from adapters.discord_bot import DiscordReply

    class Unreachable:
        async def send(self, text: str) -> None:
            raise aiohttp.ServerDisconnectedError()

    sink = DiscordReply(Unreachable())
    await sink.start()
    await sink.update("途中")
    await sink.finish("答え")
    assert caplog.text.count("could not post reply") == 3


async def test_a_storage_failure_still_gets_a_japanese_reply(
        simcord_env: simcord.Env, store: HistoryStore) -> None:
    """The database goes away (disk gone, file locked): a /reset and a mention in a followed
    thread end with the short Japanese error, not a spinner or silence; the client lives on."""
    from bot.errors import RinnaError

    user = simcord_env.create_user("erin")
    await user.send_dm("覚えておいて")
    await store.close()

    result = await user.slash("reset")
    assert result.response.content == RinnaError.user_message
    await user.send_dm("まだいる?")
    assert [m.content for m in user.dm_channel.history()][-1] == RinnaError.user_message


async def test_a_reset_is_recorded_and_marked_done_like_an_answer(
        simcord_env: simcord.Env, store: HistoryStore) -> None:
    """/reset goes through the chat service's exactly-once reset: recorded under the
    interaction (with the confirmation to show, so a restart re-shows it and resets nothing
    twice), then shown, then marked answered."""
    import sqlite3

    user = simcord_env.create_user("fay")
    await user.send_dm("覚えておいて: 赤")
    result = await user.slash("reset")
    assert result.response.content == RESET_DONE
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT state, turn_id IS NULL, final FROM deliveries"
                          " WHERE platform='discord' AND author=? ORDER BY received_at",
                          (str(user.id),)).fetchall()
    assert rows == [("answered", 0, None), ("answered", 1, None)]  # the message, the reset
    assert await store.unfinished("discord") == []
