"""The Slack adapter end to end, offline: the real AsyncApp on 127.0.0.1 port 0 (HTTP mode,
signed requests) or connected to a local Socket Mode websocket, its Web API client pointed at a
local fake Slack, the real chat service over SQLite. Assertions are on recorded Web API calls
and stored turns; every wait is on a condition."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from pydantic import SecretStr

from adapters.slack_app import HELP_MESSAGE, RESET_DONE, RESET_HINT
from adapters.slack_reply import POST_FAILED
from adapters.slack_service import SlackService, build_slack_service
from adapters.slack_text import escape
from bot.core.chat import EMPTY_ANSWER, ChatConfig, ChatService
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker, Turn
from bot.errors import ConfigError, GenerationTimeout, GeneratorError, QueueFullError
from bot.core.reply import PLACEHOLDER
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    Failure,
    command_form,
    event_callback,
    eventually,
    mention,
    message,
    sign,
)

C1 = "C1"
T0 = "1710000000.000100"
T1 = "1710000000.000200"
T2 = "1710000000.000300"
T3 = "1710000000.000400"


# ----- harness --------------------------------------------------------------------------------
@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack().start()
    yield slack
    await slack.close()


@pytest.fixture
def slack_settings(settings: Settings, fake: FakeSlack) -> Settings:
    # model_copy: port 0 (any free port) is below Settings' own bound for SLACK_PORT.
    return settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN),
        "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0,
        "slack_api_url": fake.api_url,
    })


@dataclass
class Slack:
    """One running SlackService (HTTP mode) and a client that talks to it like Slack does."""

    service: SlackService
    fake: FakeSlack
    chat: ChatService
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}/slack/events"

    async def raw(self, body: str, headers: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
            return response.status, await response.text()

    async def event(self, event: dict[str, Any], *, event_id: str | None = None,
                    retry_num: int | None = None) -> int:
        body = json.dumps(event_callback(event, event_id))
        headers = {"Content-Type": "application/json", **sign(body)}
        if retry_num is not None:
            headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        status, _ = await self.raw(body, headers)
        return status

    async def command(self, text: str, **kwargs: Any) -> tuple[int, str]:
        body = command_form(text, **kwargs)
        return await self.raw(body, {"Content-Type": "application/x-www-form-urlencoded",
                                     **sign(body)})

    async def settled(self, events: int) -> None:
        """Wait until `events` listener runs have ended (answered, ignored, duplicate...)."""
        await eventually(lambda: self.service.handlers.outcomes.total() >= events)

    def outcomes(self) -> dict[str, int]:
        return dict(self.service.handlers.outcomes)

    async def turns(self, key: ConversationKey) -> list[Turn]:
        conversation = await self.chat.store.find(key)
        assert conversation is not None, key
        stored = await self.chat.store.recent_turns(conversation, 1000)
        return [s.turn for s in reversed(stored)]


@asynccontextmanager
async def running(chat: ChatService, settings: Settings, fake: FakeSlack) -> AsyncIterator[Slack]:
    service = build_slack_service(chat, settings, host="127.0.0.1")
    await asyncio.wait_for(service.start(), 30)
    try:
        async with aiohttp.ClientSession() as http:
            yield Slack(service, fake, chat, http)
    finally:
        await asyncio.wait_for(service.close(), 30)


@pytest.fixture
async def slack(chat: ChatService, slack_settings: Settings, fake: FakeSlack
                ) -> AsyncIterator[Slack]:
    async with running(chat, slack_settings, fake) as harness:
        yield harness


def scripted_chat(store: HistoryStore, tokenizer: Tokenizer, settings: Settings,
                  replies: Sequence[str | BaseException]) -> tuple[ChatService, ScriptedGenerator]:
    *first, last = replies  # the last reply answers every later request too
    generator = ScriptedGenerator(first, default=last, chunk=400)
    config = ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0)
    return ChatService(store, generator, tokenizer, config), generator


def final_text(fake: FakeSlack, ts: str) -> str:
    return fake.texts_of(ts)[-1]


def key(channel: str = C1, thread: str = T0) -> ConversationKey:
    return ConversationKey("slack", TEAM, channel, thread)


# ----- HTTP mode: the endpoint ----------------------------------------------------------------
async def test_url_verification_echoes_the_challenge(slack: Slack) -> None:
    body = json.dumps({"token": "legacy", "challenge": "c-123", "type": "url_verification"})
    status, text = await slack.raw(body, {"Content-Type": "application/json", **sign(body)})
    assert status == 200
    assert json.loads(text) == {"challenge": "c-123"}


async def test_forged_or_stale_signatures_are_refused(slack: Slack) -> None:
    body = json.dumps(event_callback(mention(C1, T0, "質問")))
    json_type = {"Content-Type": "application/json"}
    forged = sign(body, secret="not-the-secret")
    stale = sign(body, timestamp=int(time.time()) - 10 * 60)
    tampered = body.replace('"C1"', '"C2"')
    assert tampered != body
    assert (await slack.raw(body, json_type | forged))[0] == 401
    assert (await slack.raw(body, json_type | stale))[0] == 401
    assert (await slack.raw(tampered, json_type | sign(body)))[0] == 401
    assert (await slack.raw(body, json_type))[0] == 401
    # A correctly signed request still goes through afterwards, and it alone is answered.
    assert await slack.event(mention(C1, T0, "質問")) == 200
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    assert len(slack.fake.posts(C1)) == 1


# ----- mentions, threads, follow-ups (the real tiny model) -------------------------------------
async def test_mention_is_answered_in_its_thread_with_updates(slack: Slack) -> None:
    assert await slack.event(mention(C1, T0, "日本で一番高い山は?")) == 200
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    fake = slack.fake
    assert [c.method for c in fake.calls][:1] == ["auth.test"]
    assert all(call.token == BOT_TOKEN for call in fake.calls)
    (placeholder,) = fake.posts(C1)
    assert placeholder.params["thread_ts"] == T0
    assert placeholder.text == PLACEHOLDER
    ts = placeholder.params["_ts"]
    texts = fake.texts_of(ts)
    assert len(texts) >= 2  # the placeholder, then edits (previews and the final text)
    turns = await slack.turns(key())
    assert turns[0] == Turn(Speaker.USER, "日本で一番高い山は?")
    assert turns[1].speaker is Speaker.SYSTEM and len(turns) == 2
    assert texts[-1] == escape(turns[1].text or EMPTY_ANSWER)


async def test_follow_up_in_the_thread_needs_no_mention(slack: Slack) -> None:
    await slack.event(mention(C1, T0, "こんにちは"))
    await slack.settled(1)
    await slack.event(message(C1, T1, "続きを教えて", thread_ts=T0))
    await slack.event(message(C1, T2, "別のスレッドの話", thread_ts="1700000000.000001"))
    await slack.event(message(C1, T3, "チャンネルの雑談"))
    await slack.settled(4)
    assert slack.outcomes() == {"answered": 2, "ignored": 2}
    assert all(p.params.get("thread_ts") == T0 for p in slack.fake.posts())
    turns = await slack.turns(key())
    assert [t.speaker for t in turns] == [Speaker.USER, Speaker.SYSTEM] * 2
    assert turns[2].text == "続きを教えて"


async def test_mention_in_a_followed_thread_arrives_twice_and_is_answered_once(
        slack: Slack) -> None:
    await slack.event(mention(C1, T0, "最初の質問"))
    await slack.settled(1)
    again = f"<@{BOT_USER}> 二つ目の質問"
    await asyncio.gather(
        slack.event(mention(C1, T1, "二つ目の質問", thread_ts=T0)),
        slack.event(message(C1, T1, again, thread_ts=T0)),
    )
    await slack.settled(3)
    assert slack.outcomes() == {"answered": 2, "duplicate": 1}
    assert len(slack.fake.posts(C1, T0)) == 2  # one placeholder per answered turn
    turns = await slack.turns(key())
    assert [t.text for t in turns if t.speaker is Speaker.USER] == ["最初の質問", "二つ目の質問"]


async def test_slack_retries_and_redeliveries_after_a_restart_are_not_answered_again(
        chat: ChatService, slack_settings: Settings, fake: FakeSlack) -> None:
    event = mention(C1, T0, "一度だけ答えて")
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(event, event_id="Ev1")
        await slack.settled(1)
        assert await slack.event(event, event_id="Ev1", retry_num=1) == 200
        await slack.settled(2)
        assert slack.outcomes() == {"answered": 1, "duplicate": 1}
    # A restart: a new service, a new store connection on the same database file.
    store = await HistoryStore.open(slack_settings.database_path)
    try:
        restarted = ChatService(store, chat.generator, chat.tokenizer, chat.config)
        async with running(restarted, slack_settings, fake) as slack:
            await slack.event(event, event_id="Ev1", retry_num=2)
            await slack.settled(1)
            assert slack.outcomes() == {"duplicate": 1}
    finally:
        await store.close()
    assert len(fake.posts(C1)) == 1


async def test_joining_a_thread_midway_imports_its_earlier_messages(slack: Slack) -> None:
    slack.fake.threads[(C1, T0)] = [
        {"type": "message", "user": "U2", "text": "富士山について教えて", "ts": T0,
         "thread_ts": T0},
        {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": T1, "thread_ts": T0,
         "text": "富士山は日本一高い山です &amp; 美しい山です"},
        {"type": "message", "subtype": "bot_message", "bot_id": "BOTHER", "ts": T2,
         "thread_ts": T0, "text": "ほかのボット"},
        {"type": "message", "user": "U1", "text": "<@U2> 標高は?", "ts": T3, "thread_ts": T0},
    ]
    await slack.event(mention(C1, "1710000000.000500", "それで?", thread_ts=T0))
    await slack.settled(1)
    (replies,) = slack.fake.called("conversations.replies")
    assert replies.params["ts"] == T0
    turns = await slack.turns(key())
    assert turns[:4] == [
        Turn(Speaker.USER, "富士山について教えて"),
        Turn(Speaker.SYSTEM, "富士山は日本一高い山です & 美しい山です"),
        Turn(Speaker.USER, "@はなこ 標高は?"),
        Turn(Speaker.USER, "それで?"),
    ]
    assert turns[4].speaker is Speaker.SYSTEM and len(turns) == 5
    assert slack.fake.posts(C1, T0)


async def test_dm_is_one_conversation(slack: Slack) -> None:
    await slack.event(message("D1", T0, "こんにちは", channel_type="im"))
    await slack.settled(1)
    await slack.event(message("D1", T1, "元気?", channel_type="im"))
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 2}
    posts = slack.fake.posts("D1")
    assert len(posts) == 2 and all("thread_ts" not in p.params for p in posts)
    turns = await slack.turns(key("D1", ""))
    assert [t.text for t in turns if t.speaker is Speaker.USER] == ["こんにちは", "元気?"]


async def test_bots_edits_and_deletes_are_ignored(slack: Slack) -> None:
    # The bot's own messages are dropped by bolt before any listener runs (before the 200).
    assert await slack.event(message("D1", T0, "自分の発言", user=BOT_USER,
                                     channel_type="im")) == 200
    assert await slack.event(message("D1", T1, "自分の発言", user=None, bot_id=BOT_ID,
                                     subtype="bot_message", channel_type="im")) == 200
    others = [
        message("D1", T2, "他のボット", user=None, bot_id="BOTHER", subtype="bot_message",
                channel_type="im"),
        message("D1", T3, "他のボット", user="U9", bot_id="BOTHER", channel_type="im"),
        message("D1", T3, "", user=None, subtype="message_changed", channel_type="im",
                message={"type": "message", "user": "U1", "text": "直した", "ts": T3}),
        message("D1", T3, "", user=None, subtype="message_deleted", channel_type="im",
                deleted_ts=T3),
        message(C1, T3, "<@U1> が参加しました", subtype="channel_join"),
    ]
    for event in others:
        assert await slack.event(event) == 200
    await slack.settled(len(others))
    assert slack.outcomes() == {"ignored": len(others)}
    assert not slack.fake.posts()


# ----- /rinna -----------------------------------------------------------------------------------
async def test_slash_command_posts_the_question_and_answers_in_its_thread(slack: Slack) -> None:
    status, body = await slack.command("富士山の高さは?")
    assert (status, body) == (200, "")  # acked at once, nothing shown yet
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    question, placeholder = slack.fake.posts(C1)[:2]
    assert "thread_ts" not in question.params
    assert question.text.startswith("<@U1>") and "富士山の高さは?" in question.text
    ts = question.params["_ts"]
    assert placeholder.params["thread_ts"] == ts and placeholder.text == PLACEHOLDER
    await slack.event(message(C1, "1800000001.000001", "もっと詳しく", thread_ts=ts))
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 2}
    turns = await slack.turns(key(C1, ts))
    assert [t.text for t in turns if t.speaker is Speaker.USER] == ["富士山の高さは?",
                                                                    "もっと詳しく"]


async def test_slash_command_help_and_reset_hint_are_ephemeral(slack: Slack) -> None:
    for text in ("help", ""):
        status, body = await slack.command(text)
        assert status == 200
        assert json.loads(body) == {"text": HELP_MESSAGE, "response_type": "ephemeral"}
    status, body = await slack.command("リセット")
    assert json.loads(body) == {"text": RESET_HINT, "response_type": "ephemeral"}
    assert not slack.fake.posts()


async def test_slash_command_in_a_channel_the_bot_is_not_in(slack: Slack) -> None:
    slack.fake.fail("chat.postMessage", "not_in_channel")
    status, _ = await slack.command("質問です", response_url=slack.fake.response_url("r1"))
    assert status == 200
    await slack.fake.wait_for(lambda: bool(slack.fake.responses))
    assert slack.fake.responses == [{"text": POST_FAILED, "response_type": "ephemeral",
                                     "replace_original": False}]


# ----- scripted replies: splitting, escaping, failures, reset, Web API errors ----------------
@pytest.fixture
async def scripted(request: pytest.FixtureRequest, store: HistoryStore, tokenizer: Tokenizer,
                   slack_settings: Settings, fake: FakeSlack
                   ) -> AsyncIterator[tuple[Slack, ScriptedGenerator]]:
    chat, generator = scripted_chat(store, tokenizer, slack_settings, request.param)
    async with running(chat, slack_settings, fake) as harness:
        yield harness, generator


LONG = "".join(f"これは{i}番目の文です。" for i in range(400)) + "\n```python\n" + (
    "print('<コード>')\n" * 120) + "```\n終わり。"


@pytest.mark.parametrize("scripted", [[LONG]], indirect=True)
async def test_long_reply_is_split_at_sentence_ends_outside_code(scripted) -> None:
    slack, _ = scripted
    await slack.event(mention(C1, T0, "長く話して"))
    await slack.settled(1)
    posts = slack.fake.posts(C1, T0)
    first = final_text(slack.fake, posts[0].params["_ts"])
    pieces = [first] + [p.text for p in posts[1:]]
    assert len(pieces) >= 3
    for piece in pieces:
        plain = piece.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        assert len(plain) <= 3000
        assert plain.count("```") % 2 == 0
        assert "<" not in piece  # escaped for Slack
    assert pieces[0].endswith("。")


@pytest.mark.parametrize("scripted", [["<!channel> 1 & 2 は <@U1> さん"]], indirect=True)
async def test_reply_text_is_escaped_and_input_unescaped(scripted) -> None:
    slack, generator = scripted
    await slack.event(mention(C1, T0, "&lt;b&gt; &amp; <@U2> さん"))
    await slack.settled(1)
    ts = slack.fake.posts(C1, T0)[0].params["_ts"]
    assert final_text(slack.fake, ts) == "&lt;!channel&gt; 1 &amp; 2 は &lt;@U1&gt; さん"
    turns = await slack.turns(key())
    assert turns[0] == Turn(Speaker.USER, "<b> & @はなこ さん")
    assert "<b> & @はなこ さん" in generator.prompts[0]


@pytest.mark.parametrize("scripted", [[GeneratorError("boom"), QueueFullError("full"),
                                       GenerationTimeout("slow"), "ok"]], indirect=True)
async def test_generation_failures_end_the_placeholder_with_a_short_message(scripted) -> None:
    slack, _ = scripted
    expected = [GeneratorError.user_message, QueueFullError.user_message,
                GenerationTimeout.user_message]
    for i, want in enumerate(expected):
        ts = f"171000000{i}.000100"
        await slack.event(mention(C1, ts, "質問"))
        await slack.settled(i + 1)
        placeholder = slack.fake.posts(C1, ts)[0]
        assert final_text(slack.fake, placeholder.params["_ts"]) == want
        assert "boom" not in want
    assert slack.outcomes() == {"failed": 3}


@pytest.mark.parametrize("scripted", [["一つ目の答え。", "二つ目の答え。"]], indirect=True)
async def test_mention_with_reset_starts_the_thread_afresh(scripted) -> None:
    slack, generator = scripted
    await slack.event(mention(C1, T0, "覚えていて: 合言葉はりんご"))
    await slack.settled(1)
    await asyncio.gather(
        slack.event(mention(C1, T1, "リセット", thread_ts=T0)),
        slack.event(message(C1, T1, f"<@{BOT_USER}> リセット", thread_ts=T0)),
    )
    await slack.settled(3)
    assert slack.outcomes() == {"answered": 1, "reset": 1, "duplicate": 1}
    assert [p.text for p in slack.fake.posts(C1, T0)].count(RESET_DONE) == 1
    await slack.event(message(C1, T2, "合言葉は?", thread_ts=T0))
    await slack.settled(4)
    assert "りんご" not in generator.prompts[-1]
    assert "合言葉は?" in generator.prompts[-1]


@pytest.mark.parametrize("scripted", [["答えです。"]], indirect=True)
async def test_ratelimits_and_server_errors_are_retried_after_retry_after(scripted) -> None:
    slack, _ = scripted
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    slack.service.handlers.api.sleep = no_wait
    slack.fake.fail("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "7"})
    # the first chat.update is the growing preview: dropped on failure, not waited out;
    # the second is the final text: retried after a back-off
    slack.fake.fail("chat.update", "internal_error", status=500, times=2)
    await slack.event(mention(C1, T0, "質問"))
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    assert waits == [7.0, 1.0]
    assert len(slack.fake.called("chat.update")) == 3
    (placeholder,) = slack.fake.posts(C1, T0)
    assert final_text(slack.fake, placeholder.params["_ts"]) == "答えです。"


@pytest.mark.parametrize("scripted", [["答えです。"]], indirect=True)
async def test_web_api_errors_do_not_crash_or_lose_turns(scripted, caplog) -> None:
    slack, _ = scripted
    slack.fake.always_fail["chat.postMessage"] = Failure("channel_not_found")
    caplog.set_level(logging.WARNING)
    await slack.event(mention(C1, T0, "届かない質問"))
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    assert await slack.turns(key()) == [Turn(Speaker.USER, "届かない質問"),
                                        Turn(Speaker.SYSTEM, "答えです。")]
    assert "channel_not_found" in caplog.text
    assert BOT_TOKEN not in caplog.text
    # The final text cannot be edited in (msg_too_long): it is posted instead.
    del slack.fake.always_fail["chat.postMessage"]
    slack.fake.always_fail["chat.update"] = Failure("msg_too_long")
    await slack.event(mention(C1, T1, "次の質問"))
    await slack.settled(2)
    assert [p.text for p in slack.fake.posts(C1, T1)] == [PLACEHOLDER, "答えです。"]


# ----- start-up ---------------------------------------------------------------------------------
async def test_a_rejected_bot_token_fails_fast(chat: ChatService, slack_settings: Settings,
                                               fake: FakeSlack) -> None:
    fake.always_fail["auth.test"] = Failure("invalid_auth")
    service = build_slack_service(chat, slack_settings, host="127.0.0.1")
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN"):
        await asyncio.wait_for(service.start(), 30)
    await service.close()


async def test_a_rejected_app_token_fails_fast(chat: ChatService, slack_settings: Settings,
                                               fake: FakeSlack) -> None:
    fake.always_fail["apps.connections.open"] = Failure("invalid_auth")
    settings = slack_settings.model_copy(update={"slack_app_token": SecretStr(APP_TOKEN)})
    service = build_slack_service(chat, settings, host="127.0.0.1")
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        await asyncio.wait_for(service.start(), 30)
    await service.close()


def test_a_mode_is_required(chat: ChatService, slack_settings: Settings) -> None:
    neither = slack_settings.model_copy(update={"slack_signing_secret": None})
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        build_slack_service(chat, neither)


# ----- Socket Mode ------------------------------------------------------------------------------
async def test_socket_mode_event_is_acked_and_answered(chat: ChatService,
                                                       slack_settings: Settings,
                                                       fake: FakeSlack) -> None:
    settings = slack_settings.model_copy(update={"slack_app_token": SecretStr(APP_TOKEN),
                                                 "slack_signing_secret": None})
    service = build_slack_service(chat, settings, host="127.0.0.1")
    await asyncio.wait_for(service.start(), 30)
    try:
        (opened,) = fake.called("apps.connections.open")
        assert opened.token == APP_TOKEN
        assert service.port is None  # no HTTP server in Socket Mode
        await fake.push({"envelope_id": "env-1", "type": "events_api",
                         "accepts_response_payload": False, "retry_attempt": 0,
                         "retry_reason": "", "payload": event_callback(mention(C1, T0, "やあ"))})
        await fake.wait_for(lambda: any(a.get("envelope_id") == "env-1" for a in fake.acks))
        await eventually(lambda: service.handlers.outcomes.total() >= 1)
        assert dict(service.handlers.outcomes) == {"answered": 1}
        (placeholder,) = fake.posts(C1, T0)
        assert placeholder.text == PLACEHOLDER
        assert len(fake.texts_of(placeholder.params["_ts"])) >= 2
        # A slash command over the socket: the ack carries the ephemeral help.
        form = dict(parse_qsl(command_form("help")))
        await fake.push({"envelope_id": "env-2", "type": "slash_commands",
                         "accepts_response_payload": True, "payload": form})
        await fake.wait_for(lambda: any(a.get("envelope_id") == "env-2" for a in fake.acks))
        (ack,) = [a for a in fake.acks if a.get("envelope_id") == "env-2"]
        assert ack["payload"] == {"text": HELP_MESSAGE, "response_type": "ephemeral"}
    finally:
        await asyncio.wait_for(service.close(), 30)
