"""/rinna through crashes: the command is recorded before its question is posted, so a crash
at any point (even right after the question went out, before anything else was written) ends,
after the restart's recovery, with one question in the channel and one answer in its thread.
The real SlackHandlers and chat service over SQLite, the Web API client against the local
fake Slack (which keeps every message with its metadata)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack_api import SlackApi, UserNames
from adapters.slack_app import BotIdentity, SlackHandlers
from adapters.slack_reply import POST_FAILED
from bot.core.chat import ChatConfig, ChatService
from bot.conversation import ConversationKey, Speaker
from bot.core.reply import PLACEHOLDER
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import BOT_ID, BOT_TOKEN, BOT_USER, TEAM, FakeSlack
from tests.test_chat import Crash, crashing_at

COMMAND = {"team_id": TEAM, "channel_id": "C1", "channel_name": "general", "user_id": "U1",
           "command": "/rinna", "text": "富士山の高さは?", "trigger_id": "7.8.9"}
BOT = BotIdentity(BOT_USER, BOT_ID)


async def no_wait(_: float) -> None:
    return None


class DyingApi(SlackApi):
    """The process dies right after Slack has taken the question (a top-level post)."""

    async def call(self, method: str, *, retry: bool = True, **kwargs: Any
                   ) -> AsyncSlackResponse:
        response = await super().call(method, retry=retry, **kwargs)
        if method == "chat_postMessage" and not kwargs.get("thread_ts"):
            raise Crash("after the question was posted")
        return response


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(keep_messages=True).start()
    yield slack
    await slack.close()


def handlers(fake: FakeSlack, chat: ChatService, api_class: type[SlackApi] = SlackApi
             ) -> SlackHandlers:
    api = api_class(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), sleep=no_wait)
    return SlackHandlers(chat=chat, api=api, names=UserNames(api))


async def respond(**_: Any) -> None:
    return None


@pytest.mark.parametrize("point", ["posted", "accepted", "located", "reply_ref", "user_turn",
                                   "answer_stored", "shown"])
async def test_a_command_killed_anywhere_is_asked_once_and_answered_once(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack, point: str) -> None:
    config = ChatConfig(stream_interval_s=0.0)
    first = ChatService(store, ScriptedGenerator(default="3776 m です。"), tokenizer, config,
                        crash_hook=None if point == "posted" else crashing_at(point))
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    dying = handlers(fake, first, DyingApi if point == "posted" else SlackApi)
    with pytest.raises(Crash):
        await dying.on_command(COMMAND, respond, BOT, ack)

    second = ChatService(store, ScriptedGenerator(default="3776 m です。"), tokenizer, config)
    report = await second.recover("slack", handlers(fake, second).recovery_sink)
    assert report.answered == 1

    (question,) = fake.threads[("C1", "")]  # asked once
    assert question["text"].startswith("<@U1>") and "富士山の高さは?" in question["text"]
    replies = fake.threads[("C1", question["ts"])]
    assert [m["text"] for m in replies] == ["3776 m です。"]  # answered once, no 考え中 left
    conversation = await store.find(ConversationKey("slack", TEAM, "C1", question["ts"]))
    assert conversation is not None
    turns = [(t.turn.speaker, t.turn.text)
             for t in reversed(await store.recent_turns(conversation, 10))]
    assert turns == [(Speaker.USER, "富士山の高さは?"), (Speaker.SYSTEM, "3776 m です。")]
    assert await store.unfinished("slack") == []
    assert PLACEHOLDER not in [m["text"] for m in replies]


async def test_a_command_is_acknowledged_only_once_recorded(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack) -> None:
    chat = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0),
                       crash_hook=crashing_at("accepted"))
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(await store.delivery("slack", "command:7.8.9") is not None)

    with pytest.raises(Crash):
        await handlers(fake, chat).on_command(COMMAND, respond, BOT, ack)
    assert acked == [True]  # acknowledged with the command already recorded
    assert not fake.threads  # recorded before anything was posted


async def test_a_question_post_retried_after_a_5xx_that_created_it_is_posted_once(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack) -> None:
    fake.fail("chat.postMessage", "internal_error", status=500, applied=True)
    chat = ChatService(store, ScriptedGenerator(default="答えです。"), tokenizer,
                       ChatConfig(stream_interval_s=0.0))
    assert await handlers(fake, chat).on_command(COMMAND, respond, BOT) == "answered"
    (question,) = fake.threads[("C1", "")]
    assert [m["text"] for m in fake.threads[("C1", question["ts"])]] == ["答えです。"]


async def test_a_question_that_cannot_be_posted_is_told_ephemerally_and_finished(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack) -> None:
    fake.fail("chat.postMessage", "not_in_channel")
    told: list[dict[str, Any]] = []

    async def tell(**reply: Any) -> None:
        told.append(reply)

    chat = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0))
    assert await handlers(fake, chat).on_command(COMMAND, tell, BOT) == "failed"
    assert [r["text"] for r in told] == [POST_FAILED] and not fake.threads
    assert await store.unfinished("slack") == []  # not tried again at every start
