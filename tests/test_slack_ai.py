"""Group DMs, the 「rinna に聞く」 message shortcut and the AI-app split view, end to end: the
real AsyncApp over signed HTTP, its Web API client against the local fake Slack, the real
chat service (scripted model) over SQLite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from bot.core.chat import ChatConfig, ChatService
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker, Turn
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import (
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    Failure,
    assistant_thread_started,
    eventually,
    interaction_form,
    mention,
    message,
    message_shortcut,
    sign,
)
from tests.test_slack_app import T0, T1, T2, T3, Slack, running, scripted_chat

G1 = "G1"  # a group DM (mpim)
D1 = "D1"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(keep_messages=True).start()
    yield slack
    await slack.close()


@pytest.fixture
async def slack(store: HistoryStore, tokenizer: Tokenizer, settings: Settings,
                fake: FakeSlack) -> AsyncIterator[Slack]:
    settings = settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0, "slack_api_url": fake.api_url})
    chat, _ = scripted_chat(store, tokenizer, settings, ["はい、お答えします。"])
    async with running(chat, settings, fake) as harness:
        yield harness


async def interact(slack: Slack, payload: dict[str, Any]) -> int:
    body = interaction_form(payload)
    status, _ = await slack.raw(body, {"Content-Type": "application/x-www-form-urlencoded",
                                       **sign(body)})
    return status


# ----- group DMs ------------------------------------------------------------------------------
async def test_group_dm_follow_ups_are_answered_like_in_channels(slack: Slack) -> None:
    await slack.event({**mention(G1, T0, "こんにちは"), "channel_type": "mpim"})
    await slack.settled(1)
    await slack.event(message(G1, T1, "続きを教えて", thread_ts=T0, channel_type="mpim"))
    await slack.event(message(G1, T2, "ただの雑談", channel_type="mpim"))
    await slack.settled(3)
    assert slack.outcomes() == {"answered": 2, "ignored": 1}
    assert [p.params.get("thread_ts") for p in slack.fake.posts(G1)] == [T0, T0]
    turns = await slack.turns(ConversationKey("slack", TEAM, G1, T0))
    assert [t.text for t in turns if t.speaker is Speaker.USER] == ["こんにちは", "続きを教えて"]


# ----- the message shortcut -------------------------------------------------------------------
async def test_the_shortcut_answers_in_the_messages_thread_with_it_as_the_question(
        slack: Slack) -> None:
    target = {"type": "message", "user": "U2", "ts": T0, "text": "<@U1> 富士山の高さは?"}
    press = message_shortcut("C1", target, user="U1")
    assert await interact(slack, press) == 200
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    (placeholder,) = slack.fake.posts("C1")
    assert placeholder.params["thread_ts"] == T0
    turns = await slack.turns(ConversationKey("slack", TEAM, "C1", T0))
    assert turns == [Turn(Speaker.USER, "@たろう 富士山の高さは?"),
                     Turn(Speaker.SYSTEM, "はい、お答えします。")]
    delivery = await slack.chat.store.delivery("slack", f"shortcut:{press['trigger_id']}")
    assert delivery is not None and delivery.who_asked == "U1"  # the presser asked
    # The text stays its writer's: `forget --user` / `export --user` for U2 find it.
    assert [t.text for t in await slack.chat.store.author_turns("U2")] == ["@たろう 富士山の高さは?"]
    assert await slack.chat.store.author_turns("U1") == []

    # The same press delivered again is not answered again; a second press is.
    assert await interact(slack, press) == 200
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 1, "duplicate": 1}
    assert len(slack.fake.posts("C1")) == 1
    assert await interact(slack, message_shortcut("C1", target)) == 200
    await slack.settled(3)
    assert len(slack.fake.posts("C1", T0)) == 2


async def test_the_shortcut_is_acknowledged_before_the_answer_is_written(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    settings = settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0, "slack_api_url": fake.api_url})
    gate = asyncio.Event()
    generator = ScriptedGenerator(default="はい。", gate=gate)
    chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))
    async with running(chat, settings, fake) as slack:
        target = {"type": "message", "user": "U2", "ts": T0, "text": "質問"}
        # Slack has its 200 while the model is held (an ack after the answer never comes)
        assert await asyncio.wait_for(interact(slack, message_shortcut("C1", target)), 10) == 200
        assert slack.outcomes() == {}
        gate.set()
        await slack.settled(1)
        assert slack.outcomes() == {"answered": 1}


async def test_the_shortcut_in_a_thread_answers_in_that_thread(slack: Slack) -> None:
    slack.fake.threads[("C1", T0)] = [
        {"type": "message", "user": "U2", "ts": T0, "thread_ts": T0, "text": "旅行の相談です"},
        {"type": "message", "user": "U2", "ts": T1, "thread_ts": T0, "text": "京都はどう?"},
    ]
    target = {"type": "message", "user": "U2", "ts": T1, "thread_ts": T0, "text": "京都はどう?"}
    assert await interact(slack, message_shortcut("C1", target)) == 200
    await slack.settled(1)
    assert [p.params["thread_ts"] for p in slack.fake.posts("C1")] == [T0]
    turns = await slack.turns(ConversationKey("slack", TEAM, "C1", T0))
    assert [t.text for t in turns][:2] == ["旅行の相談です", "京都はどう?"]


CANNOT_ANSWER = "このチャンネルでは回答できません。rinna をチャンネルに招待してください。"


@pytest.mark.parametrize(("channel", "error", "told"), [
    ("C9", "not_in_channel", CANNOT_ANSWER),
    ("D9", "channel_not_found", "この会話では回答できません。"),
    ("G9", "channel_not_found", CANNOT_ANSWER),
], ids=["channel", "dm", "group-dm"])
async def test_the_shortcut_where_the_bot_cannot_post_tells_the_presser(
        slack: Slack, channel: str, error: str, told: str) -> None:
    slack.fake.always_fail["chat.postMessage"] = Failure(error)
    target = {"type": "message", "user": "U2", "ts": T0, "text": "質問"}
    press = {**message_shortcut(channel, target, user="U1"),
             "response_url": slack.fake.response_url("shortcut")}
    assert await interact(slack, press) == 200
    await slack.settled(1)
    await slack.fake.wait_for(lambda: bool(slack.fake.responses))
    (response,) = slack.fake.responses  # once, though the placeholder and answer both failed
    assert response["text"].startswith(told) and response["response_type"] == "ephemeral"
    assert not slack.fake.posts() and not slack.fake.called("chat.postEphemeral")


async def test_the_shortcut_without_a_response_url_tells_the_presser_ephemerally(
        slack: Slack) -> None:
    slack.fake.always_fail["chat.postMessage"] = Failure("not_in_channel")
    target = {"type": "message", "user": "U2", "ts": T0, "text": "質問"}
    press = {k: v for k, v in message_shortcut("C9", target, user="U1").items()
             if k != "response_url"}
    assert await interact(slack, press) == 200
    await slack.settled(1)
    await eventually(lambda: bool(slack.fake.called("chat.postEphemeral")))
    (told,) = slack.fake.called("chat.postEphemeral")
    assert (told.params["channel"], told.params["user"], told.text) == ("C9", "U1", CANNOT_ANSWER)


async def test_the_shortcut_is_refused_by_the_access_policy(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    settings = settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0, "slack_api_url": fake.api_url, "blocked_users": frozenset({"U1"})})
    chat, _ = scripted_chat(store, tokenizer, settings, ["はい。"])
    async with running(chat, settings, fake) as slack:
        target = {"type": "message", "user": "U2", "ts": T0, "text": "質問"}
        assert await interact(slack, message_shortcut("C1", target, user="U1")) == 200
        await slack.settled(1)
        assert slack.outcomes() == {"denied": 1}
        assert not fake.posts()


# ----- the AI-app split view ------------------------------------------------------------------
async def test_an_assistant_thread_greets_suggests_titles_and_answers(slack: Slack) -> None:
    fake = slack.fake
    assert await slack.event(assistant_thread_started(D1, T0)) == 200
    await eventually(lambda: bool(fake.called("assistant.threads.setSuggestedPrompts")))
    (greeting,) = fake.posts(D1)
    assert greeting.params["thread_ts"] == T0 and "rinna" in greeting.text
    (prompts,) = fake.called("assistant.threads.setSuggestedPrompts")
    assert prompts.params["channel_id"] == D1 and prompts.params["thread_ts"] == T0
    suggested = prompts.params["prompts"]
    assert len(suggested) >= 2 and all(p["title"] and p["message"] for p in suggested)

    await slack.event(message(D1, T1, "日本で一番高い山は?", thread_ts=T0, channel_type="im"))
    await slack.settled(2)
    await slack.event(message(D1, T2, "その高さは?", thread_ts=T0, channel_type="im"))
    await slack.settled(3)
    assert slack.outcomes() == {"greeted": 1, "answered": 2}
    (title,) = fake.called("assistant.threads.setTitle")  # after the first question only
    assert title.params["title"] == "日本で一番高い山は?" and title.params["thread_ts"] == T0
    statuses = fake.called("assistant.threads.setStatus")
    assert [s.params["status"] for s in statuses] == ["考え中…", "考え中…"]
    assert all(p.params.get("thread_ts") == T0 for p in fake.posts(D1))
    turns = await slack.turns(ConversationKey("slack", TEAM, D1, T0))  # the assistant thread
    assert [t.text for t in turns if t.speaker is Speaker.USER] == [
        "日本で一番高い山は?", "その高さは?"]


async def test_a_changed_assistant_context_is_acknowledged(slack: Slack) -> None:
    changed = assistant_thread_started(D1, T0)
    changed["type"] = "assistant_thread_context_changed"
    assert await slack.event(changed) == 200
    assert not slack.fake.posts()


async def test_a_deleted_message_in_an_assistant_thread_leaves_the_history(
        slack: Slack) -> None:
    await slack.event(message(D1, T1, "消す質問", thread_ts=T0, channel_type="im"))
    await slack.settled(1)
    key = ConversationKey("slack", TEAM, D1, T0)
    assert "消す質問" in [t.text for t in await slack.turns(key)]
    deleted = {"type": "message", "subtype": "message_deleted", "channel": D1, "ts": T3,
               "deleted_ts": T1, "channel_type": "im", "hidden": True,
               "previous_message": {"type": "message", "user": "U1", "ts": T1,
                                    "thread_ts": T0, "text": "消す質問"}}
    assert await slack.event(deleted) == 200
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 1, "deleted": 1}
    assert "消す質問" not in [t.text for t in await slack.turns(key)]


def test_the_manifest_subscribes_to_what_the_listeners_take() -> None:
    import yaml

    with open(Path(__file__).parent.parent / "slack-manifest.yml", encoding="utf-8") as file:
        manifest = yaml.safe_load(file)
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"message.mpim", "assistant_thread_started", "assistant_thread_context_changed",
            "message.im", "app_mention"} <= events
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"mpim:history", "assistant:write", "chat:write", "users:read"} <= scopes
    assert "assistant_view" in manifest["features"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    shortcuts = {s["callback_id"]: s for s in manifest["features"]["shortcuts"]}
    assert set(shortcuts) == {"rinna_ask", "rinna_summary"}
    shortcut = shortcuts["rinna_ask"]
    assert shortcut["type"] == "message"
    assert json.dumps(shortcut["name"], ensure_ascii=False) == '"rinna に聞く"'
    assert (shortcuts["rinna_summary"]["type"], shortcuts["rinna_summary"]["name"]) == (
        "message", "要約")
