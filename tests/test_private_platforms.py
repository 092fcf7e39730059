"""Deleting or editing a message on the platform reaches storage: the real Slack AsyncApp over
signed HTTP (fake Web API) and discord.py in simcord, the real chat service and SQLite; only the
model's words are scripted, so the prompts it was given can be read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import simcord

from adapters.discord_bot import RinnaDiscordBot, build_discord_bot
from bot.core.chat import ChatService
from bot.config import Settings
from bot.service.privacy import forget_user
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import BOT_ID, BOT_USER, FakeSlack, mention, message
from tests.test_slack_app import (  # noqa: F401  (fixtures)
    Slack,
    fake,
    running,
    scripted_chat,
    slack_settings,
)
from tests.test_private import command

CARD = "カード番号 4111 1111 1111 1111"
C1 = "C1"
T0, T1, T2, T3 = "1710000000.000100", "1710000000.000200", "1710000000.000300", "1710000000.000400"


def on_disk(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal"))
                    if p.exists())


def deleted(channel: str, ts: str, **previous: Any) -> dict[str, Any]:
    return {"type": "message", "subtype": "message_deleted", "hidden": True, "channel": channel,
            "ts": "1710000099.000001", "deleted_ts": ts, "channel_type": "channel",
            "previous_message": {"type": "message", "ts": ts, **previous}}


def changed(channel: str, ts: str, text: str, **inner: Any) -> dict[str, Any]:
    return {"type": "message", "subtype": "message_changed", "hidden": True, "channel": channel,
            "ts": "1710000099.000002", "channel_type": "channel",
            "message": {"type": "message", "user": "U1", "text": text, "ts": ts,
                        "edited": {"user": "U1", "ts": "1710000099.000002"}, **inner}}


# ----- Slack ----------------------------------------------------------------------------------
@pytest.fixture
def scripted(store: HistoryStore, tokenizer: Tokenizer,
             settings: Settings) -> tuple[ChatService, ScriptedGenerator]:
    return scripted_chat(store, tokenizer, settings, ["はい、承知しました。"])


@pytest.fixture
async def slack(scripted: tuple[ChatService, ScriptedGenerator], slack_settings: Settings,
                fake: FakeSlack) -> AsyncIterator[Slack]:  # noqa: F811
    async with running(scripted[0], slack_settings, fake) as harness:
        yield harness


async def test_slack_a_deleted_message_leaves_the_next_prompt_and_the_files(
        slack: Slack, scripted: tuple[ChatService, ScriptedGenerator],
        settings: Settings) -> None:
    generator = scripted[1]
    await slack.event(mention(C1, T0, "こんにちは"))
    await slack.settled(1)
    await slack.event(message(C1, T1, CARD, thread_ts=T0))
    await slack.settled(2)
    assert CARD in generator.prompts[-1]

    assert await slack.event(deleted(C1, T1, user="U1", text=CARD, thread_ts=T0)) == 200
    await slack.settled(3)
    assert slack.outcomes() == {"answered": 2, "deleted": 1}
    await slack.event(message(C1, T2, "さっきの件ですが", thread_ts=T0))
    await slack.settled(4)
    assert "4111" not in generator.prompts[-1]
    assert "こんにちは" in generator.prompts[-1]  # the rest of the thread is still there
    assert b"4111" not in on_disk(settings.database_path)
    # the deleted message's own event, retried by Slack, is still not answered
    await slack.event(message(C1, T1, CARD, thread_ts=T0), retry_num=1)
    await slack.settled(5)
    assert slack.outcomes()["duplicate"] == 1


async def test_slack_an_edited_message_changes_the_stored_turn(
        slack: Slack, scripted: tuple[ChatService, ScriptedGenerator],
        settings: Settings) -> None:
    generator = scripted[1]
    await slack.event(mention(C1, T0, CARD))
    await slack.settled(1)
    await slack.event(changed(C1, T0, f"<@{BOT_USER}> カード番号は伏せます", thread_ts=T0))
    await slack.settled(2)
    # another app's message edited (bolt itself drops the bot's own): not a person's turn
    await slack.event(changed(C1, T1, "はい", user="U0OTHERBOT", bot_id="B0OTHER", thread_ts=T0))
    await slack.settled(3)
    # The newest question, edited at once, is also answered again (issue 27): "answered" 2.
    assert slack.outcomes() == {"answered": 2, "ignored": 1}
    await slack.event(message(C1, T2, "続けて", thread_ts=T0))
    await slack.settled(4)
    assert "ユーザー: カード番号は伏せます<NL>" in generator.prompts[-1]
    assert "4111" not in generator.prompts[-1]
    assert b"4111" not in on_disk(settings.database_path)


async def test_slack_a_deleted_thread_start_becomes_a_tombstone_and_leaves_storage(
        slack: Slack, scripted: tuple[ChatService, ScriptedGenerator]) -> None:
    await slack.event(mention(C1, T0, CARD))
    await slack.settled(1)
    await slack.event(message(C1, T1, "続き", thread_ts=T0))
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 2}
    await slack.event(changed(C1, T0, "This message was deleted.", subtype="tombstone",
                              hidden=True, thread_ts=T0, user="USLACKBOT"))
    await slack.settled(3)
    assert slack.outcomes()["deleted"] == 1
    await slack.event(message(C1, T3, "まだいますか", thread_ts=T0))
    await slack.settled(4)
    assert "4111" not in scripted[1].prompts[-1] and "続き" in scripted[1].prompts[-1]


async def test_slack_forget_reaches_messages_imported_when_joining_a_thread_midway(
        slack: Slack, scripted: tuple[ChatService, ScriptedGenerator], store: HistoryStore,
        settings: Settings, tmp_path: Path) -> None:
    """A thread's earlier messages are stored with their author's Slack user id (not the
    display name), so `rinna-bot forget --user` deletes them like any other."""
    generator = scripted[1]
    slack.fake.threads[(C1, T0)] = [
        {"type": "message", "user": "U2", "text": CARD, "ts": T0, "thread_ts": T0},
        {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": T1, "thread_ts": T0,
         "text": "承知しました。"},
        {"type": "message", "user": "U1", "text": "献立の相談です", "ts": T2, "thread_ts": T0},
    ]
    await slack.event(mention(C1, T3, "それで?", thread_ts=T0))
    await slack.settled(1)
    assert CARD in generator.prompts[-1]  # imported
    assert [t.text for t in await store.author_turns("U2")] == [CARD]
    assert [t.text for t in await store.author_turns("U1")] == ["献立の相談です", "それで?"]
    assert await store.author_turns("はなこ") == []  # the id, not the display name

    result = command("forget", "--user", "U2", db=settings.database_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "deleted 1 stored messages" in result.stderr
    assert b"4111" not in on_disk(settings.database_path)
    await slack.event(message(C1, "1710000000.000500", "続けて", thread_ts=T0))
    await slack.settled(2)
    assert "4111" not in generator.prompts[-1] and "献立の相談です" in generator.prompts[-1]


async def test_slack_deleting_a_message_asked_about_with_the_shortcut_deletes_its_text(
        slack: Slack, scripted: tuple[ChatService, ScriptedGenerator],
        settings: Settings) -> None:
    """「rinna に聞く」: the answer's delivery is the press (its trigger id), but the delete
    event names the message: its id is recorded with the answer, so the deletion reaches it."""
    from tests.slack_fakes import interaction_form, message_shortcut, sign

    target = {"type": "message", "user": "U2", "ts": T0, "text": CARD}
    body = interaction_form(message_shortcut(C1, target, user="U1"))
    status, _ = await slack.raw(body, {"Content-Type": "application/x-www-form-urlencoded",
                                       **sign(body)})
    assert status == 200
    await slack.settled(1)
    assert CARD in scripted[1].prompts[-1]
    assert await slack.event(deleted(C1, T0, user="U2", text=CARD)) == 200
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 1, "deleted": 1}
    assert await slack.chat.store.author_turns("U2") == []
    assert b"4111" not in on_disk(settings.database_path)


# ----- Discord --------------------------------------------------------------------------------
@pytest.fixture
def simcord_bot(scripted: tuple[ChatService, ScriptedGenerator],
                settings: Settings) -> RinnaDiscordBot:
    return build_discord_bot(scripted[0], settings)


@pytest.mark.simcord(settle_timeout=60)
async def test_discord_deleted_and_edited_messages_reach_the_next_prompt(
        simcord_env: simcord.Env, scripted: tuple[ChatService, ScriptedGenerator],
        settings: Settings) -> None:
    env, generator = simcord_env, scripted[1]
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    await alice.send(channel, f"{env.bot.user.mention} こんにちは")
    (thread,) = channel.threads
    card = await alice.send(thread, CARD)
    plan = await alice.send(thread, "献立を考えて")
    assert CARD in generator.prompts[-1]

    await alice.delete(card)
    await alice.edit(plan, "夕飯の献立を考えて")
    await env.settle()
    await alice.send(thread, "続けて")
    prompt = generator.prompts[-1]
    assert "4111" not in prompt
    assert "ユーザー: 夕飯の献立を考えて<NL>" in prompt and "こんにちは" in prompt
    assert b"4111" not in on_disk(settings.database_path)


@pytest.mark.simcord(settle_timeout=60)
async def test_discord_a_dm_deleted_is_forgotten(
        simcord_env: simcord.Env, scripted: tuple[ChatService, ScriptedGenerator]) -> None:
    env, generator = simcord_env, scripted[1]
    bob = env.create_user("bob")
    card = await bob.send_dm(CARD)
    await env.settle()
    assert CARD in generator.prompts[-1]
    await bob.delete(card)
    await env.settle()
    await bob.send_dm("覚えていますか")
    await env.settle()
    assert "4111" not in generator.prompts[-1]


@pytest.mark.simcord(settle_timeout=60)
async def test_discord_forget_reaches_messages_imported_when_joining_a_thread_midway(
        simcord_env: simcord.Env, scripted: tuple[ChatService, ScriptedGenerator],
        store: HistoryStore, settings: Settings) -> None:
    env, generator = simcord_env, scripted[1]
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    alice = guild.add_member(env.create_user("alice"))
    bob = guild.add_member(env.create_user("bob"))
    thread = simcord.ChannelHandle(
        env, guild, env.backend.create_thread(channel.id, "雑談", alice.id))
    await alice.send(thread, CARD)
    env.backend.create_message(thread.id, env.bot.user.id, "以前の回答です。")
    await bob.send(thread, "献立を考えて")
    await bob.send(thread, f"{env.bot.user.mention} どうですか")  # the bot joins here
    await env.settle()
    assert CARD in generator.prompts[-1]  # imported
    assert [t.text for t in await store.author_turns(str(alice.id))] == [CARD]
    assert [t.text for t in await store.author_turns(str(bob.id))] == ["献立を考えて", "どうですか"]

    assert await forget_user(settings.database_path, str(alice.id), "discord") == 1
    assert b"4111" not in on_disk(settings.database_path)
    await bob.send(thread, "続けて")
    await env.settle()
    assert "4111" not in generator.prompts[-1] and "献立を考えて" in generator.prompts[-1]
