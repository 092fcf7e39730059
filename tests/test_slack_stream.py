"""Native streaming (chat.startStream / appendStream / stopStream) end to end: the real
AsyncApp over HTTP, its Web API client against the local fake Slack (which streams per
Slack's reference, or answers like a Slack without it), the real chat service over SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_api import SlackApi, UserNames
from adapters.slack_app import BotIdentity, SlackHandlers, parse_message
from bot.core.chat import ChatConfig, ChatService
from bot.config import Settings
from bot.conversation import Speaker
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import (
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    event_callback,
    mention,
)
from tests.test_chat import Crash, crashing_at
from tests.test_slack_app import C1, T0, T1, key, running

LONG = "".join(f"{n}番目の文です。" for n in range(1, 121))  # about 900 characters
BOT = BotIdentity(BOT_USER, BOT_ID)
Answer = tuple[FakeSlack, list[str]]


def settings_for(settings: Settings, fake: FakeSlack) -> Settings:
    return settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0, "slack_api_url": fake.api_url})


def chat_for(store: HistoryStore, tokenizer: Tokenizer, reply: str = LONG, **kwargs: Any
             ) -> ChatService:
    # Every 20 characters the service hands the sink the text so far (interval 0): a preview
    # edit per delta is what the chat.update fallback makes of it.
    return ChatService(store, ScriptedGenerator(default=reply, chunk=20), tokenizer,
                       ChatConfig(stream_interval_s=0.0), **kwargs)


class StepClock:
    """Time for the stream's pacing: `step` seconds pass at every look (each preview the chat
    service hands over looks once), so 55 previews of a fast fake model span 5.5 s."""

    def __init__(self, step: float = 0.1) -> None:
        self.now = 1000.0
        self.step = step
        self.looks = 0

    def __call__(self) -> float:
        self.now += self.step
        self.looks += 1
        return self.now


async def answer_once(store: HistoryStore, tokenizer: Tokenizer, settings: Settings, *,
                      streaming: bool, ts: str = T0, clock: StepClock | None = None
                      ) -> tuple[FakeSlack, list[str]]:
    """One mention answered by a fresh app; the Web API methods it called for the answer."""
    fake = await FakeSlack(streaming=streaming, keep_messages=True).start()
    try:
        chat = chat_for(store, tokenizer)
        async with running(chat, settings_for(settings, fake), fake) as slack:
            if clock is not None:
                slack.service.handlers.streams.clock = clock
            before = len(fake.calls)
            assert await slack.event(mention(C1, ts, "長く話して")) == 200
            await slack.settled(1)
            assert slack.outcomes() == {"answered": 1}
            methods = [call.method for call in fake.calls[before:]]
    finally:
        await fake.close()
    return fake, methods


async def test_a_streamed_answer_takes_a_few_calls_where_edits_take_one_per_update(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings) -> None:
    clock = StepClock()
    streamed, calls = await answer_once(store, tokenizer, settings, streaming=True, clock=clock)
    # start (with the 「停止」 button inside), appends, stop, then one chat.update that sets
    # the finished answer's buttons (「もう一度」, 👍/👎) in place of 「停止」
    assert calls[0] == "chat.startStream" and calls[-2:] == ["chat.stopStream", "chat.update"]
    assert set(calls[1:-2]) == {"chat.appendStream"} and "chat.postMessage" not in calls
    (message,) = streamed.messages.values()
    assert message["text"] == LONG and not message["streaming"]
    start = streamed.called("chat.startStream")[0].params
    (stop_button,) = start["chunks"][0]["blocks"][0]["elements"]
    assert stop_button["action_id"] == "rinna_stop"
    *text, regenerate, feedback = message["blocks"]
    assert [e["action_id"] for e in regenerate["elements"]] == ["rinna_regenerate"]
    assert [e["type"] for e in feedback["elements"]] == ["feedback_buttons"]
    assert "".join(b["text"]["text"] for b in text) == LONG
    assert start["thread_ts"] == T0
    assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U1", TEAM)
    # tagged like a posted reply, so a restart finds it
    assert message["metadata"]["event_payload"] == {"delivery": f"{C1}:{T0}", "part": 0}

    fallback_fake, fallback = await answer_once(store, tokenizer, settings, streaming=False,
                                                ts=T1)
    assert fallback[:2] == ["chat.startStream", "chat.postMessage"]  # refused, then posted
    (answer,) = [m for m in fallback_fake.messages.values()]
    assert answer["text"] == LONG
    # ~45 previews of 20 characters: one chat.update each, against 256-character appends
    assert fallback.count("chat.update") > 40
    # paced: at most one append a second, and text waits at most 2 s (or 256 characters)
    seconds = clock.looks * clock.step
    appends = calls.count("chat.appendStream")
    assert seconds / 2 - 1 <= appends <= seconds + 1
    assert len(calls) * 5 < len(fallback)
    print(f"\nWeb API calls per {len(LONG)}-character answer ({len(fallback) - 2} previews, "
          f"{seconds:.1f} s paced): streamed {len(calls)}, chat.update fallback {len(fallback)}")


async def test_a_workspace_without_streaming_is_asked_once_per_process(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings) -> None:
    fake = await FakeSlack(streaming=False).start()
    try:
        chat = chat_for(store, tokenizer, "はい。")
        async with running(chat, settings_for(settings, fake), fake) as slack:
            for n, ts in enumerate((T0, T1), start=1):
                assert await slack.event(mention(C1, ts, "質問")) == 200
                await slack.settled(n)
            assert slack.outcomes() == {"answered": 2}
            assert len(fake.called("chat.startStream")) == 1
            assert len(fake.posts(C1)) == 2
            assert [m["text"] for m in fake.messages.values()] == ["はい。", "はい。"]
    finally:
        await fake.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(streaming=True, keep_messages=True).start()
    yield slack
    await slack.close()


async def no_wait(_: float) -> None:
    return None


def handlers(fake: FakeSlack, chat: ChatService) -> SlackHandlers:
    api = SlackApi(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), sleep=no_wait)
    return SlackHandlers(chat=chat, api=api, names=UserNames(api))


def parsed(ts: str = T0, text: str = "長く話して") -> Any:
    body = event_callback(mention(C1, ts, text))
    return parse_message(body, body["event"])


async def test_a_per_message_error_falls_back_for_that_answer_only(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack) -> None:
    fake.fail("chat.startStream", "not_in_channel")
    services = handlers(fake, chat_for(store, tokenizer, "はい。"))
    assert await services.on_mention(parsed(T0), BOT) == "answered"
    assert services.streams.enabled  # not the workspace's fault: the next answer streams
    assert await services.on_mention(parsed(T1), BOT) == "answered"
    assert len(fake.posts(C1)) == 1 and len(fake.called("chat.startStream")) == 2
    assert [m["text"] for m in fake.messages.values()] == ["はい。", "はい。"]


async def test_a_stream_cut_by_a_crash_is_finished_with_chat_update_after_the_restart(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack) -> None:
    dying = handlers(fake, chat_for(store, tokenizer, crash_hook=crashing_at("streaming")))
    with pytest.raises(Crash):
        await dying.on_mention(parsed(), BOT)
    (ts,) = fake.messages
    delivery = await store.delivery("slack", f"{C1}:{T0}")
    assert delivery is not None and delivery.reply_ref == f"{C1}/{ts}"  # the stream's message

    second = chat_for(store, tokenizer)
    report = await second.recover("slack", handlers(fake, second).recovery_sink)
    assert report.answered == 1
    assert list(fake.messages) == [ts]  # that message, not a second one
    assert fake.messages[ts]["text"] == LONG and not fake.messages[ts]["streaming"]
    updates = [c for c in fake.called("chat.update") if c.params.get("ts") == ts]
    assert updates and updates[-1].text == LONG
    conversation = await store.find(key())
    assert conversation is not None
    turns = [s.turn for s in reversed(await store.recent_turns(conversation, 10))]
    assert [t.speaker for t in turns] == [Speaker.USER, Speaker.SYSTEM]


async def test_a_rinna_command_streams_its_answer_into_the_questions_thread(
        store: HistoryStore, tokenizer: Tokenizer, fake: FakeSlack) -> None:
    command = {"team_id": TEAM, "channel_id": C1, "channel_name": "general", "user_id": "U1",
               "command": "/rinna", "text": "長く話して", "trigger_id": "7.8.9"}

    async def respond(**_: Any) -> None:
        return None

    services = handlers(fake, chat_for(store, tokenizer))
    assert await services.on_command(command, respond, BOT) == "answered"
    (question,) = fake.threads[(C1, "")]
    (start,) = fake.called("chat.startStream")
    assert start.params["thread_ts"] == question["ts"]
    assert start.params["recipient_user_id"] == "U1"
    (answer,) = fake.threads[(C1, question["ts"])]
    assert answer["text"] == LONG and answer["metadata"]["event_payload"]["part"] == 0


async def test_appends_are_paced_to_one_a_second_however_fast_the_text_comes(
        fake: FakeSlack) -> None:
    from adapters.slack_stream import NativeStream, StreamSupport

    clock = StepClock(step=0.1)
    api = SlackApi(AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), sleep=no_wait)
    stream = NativeStream(api, StreamSupport(clock=clock), C1, T0, user="U1", team=TEAM,
                          limit=100_000)
    assert await stream.start() is not None
    text = ""
    for n in range(50):  # 300 new characters every 0.1 s: past the 256-character mark each time
        text += f"{n:03d}" * 100
        await stream.append(text)
    assert await stream.stop(text + "。", metadata=None)
    appends = len(fake.called("chat.appendStream"))
    seconds = clock.looks * clock.step
    assert 1 <= appends <= seconds + 1
    (message,) = fake.messages.values()
    assert message["text"] == text + "。" and not message["streaming"]
