"""No double post on a platform retry, and a restart that edits the placeholder it posted:
Slack's chat.postMessage retried after a 5xx that did create the message (message metadata
carries the delivery key; the thread is checked before posting again), Discord's send retried
with the same nonce, and Discord recovery editing the stored placeholder (real discord.py
against the local fake REST API and gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket
from slack_sdk.web.async_client import AsyncWebClient

from adapters.discord_bot import build_discord_bot
from adapters.slack_api import SlackApi
from adapters.slack_reply import SlackReply
from bot.core.chat import ChatService
from bot.config import Settings
from bot.conversation import ConversationKey
from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from storage.history import HistoryStore
from tests.discord_fakes import CHANNEL_ID, GUILD_ID, FakeDiscord
from tests.slack_fakes import BOT_TOKEN, FakeSlack


async def no_wait(_: float) -> None:
    return None


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(keep_messages=True).start()
    yield fake
    await fake.close()


def slack_reply(fake: FakeSlack, tag: str | None) -> SlackReply:
    api = SlackApi(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), sleep=no_wait)
    return SlackReply(api, "C1", "100.000001", tag=tag)


async def test_slack_post_retried_after_a_5xx_that_created_the_message_posts_once(
        fake_slack: FakeSlack) -> None:
    fake_slack.fail("chat.postMessage", "internal_error", status=500, applied=True)
    sink = slack_reply(fake_slack, "C1:100.000001")
    await sink.start()
    (message,) = fake_slack.threads[("C1", "100.000001")]  # one message, not two
    assert message["metadata"] == {"event_type": "rinna_reply", "event_payload": {
        "delivery": "C1:100.000001", "part": 0}}
    assert sink.placeholder_ref() == f"C1/{message['ts']}"  # the reply goes on in that message
    await sink.finish("答えです。")
    assert [m["text"] for m in fake_slack.threads[("C1", "100.000001")]] == ["答えです。"]
    assert len(fake_slack.called("chat.postMessage")) == 1  # looked, did not post again


async def test_slack_post_retried_after_a_5xx_that_created_nothing_posts_once(
        fake_slack: FakeSlack) -> None:
    fake_slack.fail("chat.postMessage", "internal_error", status=503)
    sink = slack_reply(fake_slack, "C1:100.000001")
    await sink.start()
    assert [m["text"] for m in fake_slack.threads[("C1", "100.000001")]] == [PLACEHOLDER]
    assert len(fake_slack.called("conversations.replies")) == 1


async def test_a_resumed_slack_reply_finds_its_placeholder_and_later_pieces_by_tag(
        fake_slack: FakeSlack) -> None:
    first = slack_reply(fake_slack, "C1:100.000001")
    await first.start()
    long = "。".join(["とても長い答えの一文です"] * 400) + "。"
    await first.finish(long)  # two messages (3,000-character pieces)
    before = [m["ts"] for m in fake_slack.threads[("C1", "100.000001")]]
    assert len(before) >= 2
    again = slack_reply(fake_slack, "C1:100.000001")  # a restart, the ref never stored
    await again.resume(None)
    await again.finish(long)
    assert [m["ts"] for m in fake_slack.threads[("C1", "100.000001")]] == before


# ----- Discord --------------------------------------------------------------------------------
@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    yield fake
    await fake.close()


def finals(fake: FakeDiscord, channel_id: int) -> list[str]:
    return [m["content"] for m in fake.posted_in(channel_id)
            if m["content"] != PLACEHOLDER and not m["content"].endswith(PREVIEW_TAIL)]


async def test_discord_send_retried_after_a_5xx_or_a_restart_posts_once(
        fake_discord: FakeDiscord, chat: ChatService, settings: Settings,
        store: HistoryStore) -> None:
    """discord.py resends a failed request with the same nonce; the nonce comes from the
    delivery key, so a restarted process that must post the placeholder again (it died
    before storing its id) gets the first message back too, not a second one."""
    fake = fake_discord
    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake.wait_for(lambda: bot.is_ready() or running.done())
        fake.fail_after_create = 1  # the placeholder is created, the answer to it lost
        question = await fake.user_says("質問です", mention_bot=True)
        await fake.wait_for(lambda: finals(fake, question))
        sends = [r for r in fake.requests
                 if r.method == "POST" and r.path == f"/channels/{question}/messages"]
        assert len(sends) == 2 and sends[0].body["nonce"] == sends[1].body["nonce"]
        assert len(fake.posted_in(question)) == 1

        # the restart: a new sink for the same message posts its placeholder again
        (delivery,) = [d for d in [await store.delivery("discord", str(question))] if d]
        again = bot.recovery_sink(delivery)
        await again.start()
        assert len(fake.posted_in(question)) == 1
        assert again.placeholder_ref() == f"{question}/{fake.posted_in(question)[0]['id']}"
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)


async def test_discord_recovery_edits_the_stored_placeholder(
        fake_discord: FakeDiscord, chat: ChatService, settings: Settings,
        store: HistoryStore) -> None:
    """A process took on a mention, posted 「考え中…」 in its thread and died. The next one
    answers it by editing that message: no second message, no placeholder left."""
    fake = fake_discord
    question = 900000000000005000
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(question))
    placeholder = fake._message(question, PLACEHOLDER)  # what the dead process had posted
    delivery = await store.accept(key, str(question), "日本で一番高い山は?")
    assert delivery is not None
    dead = await store.take(delivery, "the dead process")
    assert dead is not None
    assert await store.show_placeholder(dead, f"{question}/{placeholder['id']}")

    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake.wait_for(lambda: bot.is_ready() or running.done())
        report = await chat.recover("discord", bot.recovery_sink)
        assert report.answered == 1
        (message,) = fake.posted_in(question)
        assert message["id"] == placeholder["id"] and message["content"] != PLACEHOLDER
        assert not any(r.method == "POST" and r.path == f"/channels/{question}/messages"
                       for r in fake.requests)
        assert await store.unfinished("discord") == []
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)
