"""The answer's buttons on Slack, end to end: signed block_actions posted to the real AsyncApp
over HTTP as Slack posts them, its Web API client against the local fake Slack (streaming or
not), the real chat service over a SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from bot.core.chat import ChatConfig, ChatService
from bot.config import Settings
from bot.core.controls import STOPPED_MARK
from bot.conversation import ConversationKey, Speaker
from bot.errors import RinnaError
from bot.engine.generation import GenerationParams
from bot.engine.generator import WaitCallback
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import (
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    block_action,
    eventually,
    interaction_form,
    mention,
    sign,
)
from tests.test_slack_app import C1, T0, T1, Slack, running

NOT_ASKER = "この回答を止められるのは質問した人だけです。"
KEY = ConversationKey("slack", TEAM, C1, T0)


class EndlessGenerator:
    """Writes `partial`, then keeps generating (waits) until it is aborted: a runaway answer.
    `running` is how many of its streams are live, as an engine's batch would count them."""

    def __init__(self, partial: str = "長い長い答えを書いています") -> None:
        self.partial = partial
        self.running = 0
        self.aborted = 0
        self.prompts: list[str] = []

    async def stream(self, prompt: str, params: GenerationParams | None = None, *,
                     owner: str | None = None,
                     on_wait: WaitCallback | None = None) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        self.running += 1
        try:
            yield self.partial
            await asyncio.Event().wait()  # never set: only an abort ends it
            yield "（ここまで来てはいけません）"
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted += 1
            raise
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        return None


def slack_settings(settings: Settings, fake: FakeSlack) -> Settings:
    return settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0, "slack_api_url": fake.api_url})


@asynccontextmanager
async def app(database: Path, tokenizer: Tokenizer, settings: Settings, fake: FakeSlack,
              generator: Any) -> AsyncIterator[Slack]:
    """One process: its own store connection on the database file, chat service, Slack app."""
    store = await HistoryStore.open(database)
    try:
        chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))
        async with running(chat, slack_settings(settings, fake), fake) as slack:
            yield slack
    finally:
        await store.close()


async def press(slack: Slack, ts: str, action_id: str, value: str, *, user: str = "U1",
                channel: str = C1) -> None:
    message = {"type": "message", "ts": ts, "thread_ts": T0,
               **{k: v for k, v in slack.fake.messages[ts].items() if k in ("text", "blocks")}}
    body = interaction_form(block_action(channel, message, action_id, value, user=user))
    status, _ = await slack.raw(body, {"Content-Type": "application/x-www-form-urlencoded",
                                       **sign(body)})
    assert status == 200


def ephemerals(fake: FakeSlack, user: str) -> list[str]:
    return [c.text for c in fake.called("chat.postEphemeral") if c.params.get("user") == user]


def buttons(fake: FakeSlack, ts: str) -> list[str]:
    return [e["action_id"] for b in fake.messages[ts]["blocks"]
            if b["type"] in ("actions", "context_actions") for e in b["elements"]]


async def ask(slack: Slack, ts: str = T0, text: str = "質問です", *, settled: int = 1,
              thread_ts: str | None = None) -> None:
    assert await slack.event(mention(C1, ts, text, thread_ts=thread_ts)) == 200
    await slack.settled(settled)


async def the_answer(slack: Slack, delivery_key: str = f"{C1}:{T0}") -> str:
    """The ts of the answer's main message, once stored (the store names it `channel/ts`)."""
    async def stored() -> bool:
        record = await slack.chat.store.delivery("slack", delivery_key)
        return record is not None and record.reply_ref is not None
    await eventually(stored)
    record = await slack.chat.store.delivery("slack", delivery_key)
    assert record is not None and record.reply_ref is not None
    channel, _, ts = record.reply_ref.rpartition("/")
    assert channel == record.key.channel
    return ts


# ----- 「停止」 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("streaming", [True, False], ids=["native-stream", "chat.update"])
async def test_stop_aborts_the_generation_and_keeps_the_partial_answer(
        tokenizer: Tokenizer, settings: Settings, streaming: bool) -> None:
    fake = await FakeSlack(keep_messages=True, streaming=streaming).start()
    generator = EndlessGenerator()
    try:
        async with app(settings.database_path, tokenizer, settings, fake, generator) as slack:
            assert await slack.event(mention(C1, T0, "止まらない話をして")) == 200
            ts = await the_answer(slack)
            await eventually(lambda: generator.running == 1 and bool(fake.messages.get(ts)))
            assert buttons(fake, ts) == ["rinna_stop"]

            await press(slack, ts, "rinna_stop", "stop", user="U2")  # not the asker
            await eventually(lambda: bool(ephemerals(fake, "U2")))
            assert ephemerals(fake, "U2") == [NOT_ASKER]
            assert generator.running == 1  # still answering

            await press(slack, ts, "rinna_stop", "stop", user="U1")
            await slack.settled(1)
            assert slack.outcomes() == {"answered": 1}
            assert (generator.running, generator.aborted) == (0, 1)  # left the batch
            shown = fake.messages[ts]["text"]
            assert shown == f"{generator.partial}\n\n{STOPPED_MARK}"
            assert buttons(fake, ts) == ["rinna_regenerate", "rinna_feedback"]
            assert ephemerals(fake, "U1") == []  # done: the message says so
            turns = await slack.turns(KEY)
            assert [(t.speaker, t.text) for t in turns] == [
                (Speaker.USER, "止まらない話をして"), (Speaker.SYSTEM, generator.partial)]
    finally:
        await fake.close()


async def test_a_workspace_admin_may_stop_anyones_answer(
        tokenizer: Tokenizer, settings: Settings) -> None:
    fake = await FakeSlack(keep_messages=True, admins=frozenset({"U2"})).start()
    generator = EndlessGenerator()
    try:
        async with app(settings.database_path, tokenizer, settings, fake, generator) as slack:
            await slack.event(mention(C1, T0, "止まらない話をして"))
            ts = await the_answer(slack)
            await eventually(lambda: generator.running == 1)
            await press(slack, ts, "rinna_stop", "stop", user="U2")
            await slack.settled(1)
            assert generator.running == 0 and ephemerals(fake, "U2") == []
            assert fake.messages[ts]["text"].endswith(STOPPED_MARK)
            # users.info once: the moderator check is only asked after a refusal
            assert [c.params["user"] for c in fake.called("users.info")].count("U2") == 1
    finally:
        await fake.close()


# ----- 「もう一度」 and 👍/👎 ---------------------------------------------------------------------
@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(keep_messages=True, streaming=True).start()
    yield slack
    await slack.close()


def scripted(replies: Sequence[str]) -> ScriptedGenerator:
    return ScriptedGenerator(replies[:-1], default=replies[-1])


async def test_regenerate_replaces_the_answer_in_the_history(
        tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    generator = scripted(["最初の答えです。", "二つ目の答えです。", "三つ目です。"])
    async with app(settings.database_path, tokenizer, settings, fake, generator) as slack:
        await ask(slack)
        first = await the_answer(slack)
        assert buttons(fake, first) == ["rinna_regenerate", "rinna_feedback"]

        await press(slack, first, "rinna_regenerate", "regenerate", user="U2")  # not the asker
        await eventually(lambda: bool(ephemerals(fake, "U2")))
        assert "質問した人だけ" in ephemerals(fake, "U2")[0]

        await press(slack, first, "rinna_regenerate", "regenerate")
        await eventually(lambda: len(fake.messages) == 2
                         and not any(m["streaming"] for m in fake.messages.values())
                         and buttons(fake, first) == ["rinna_feedback"])
        second = [ts for ts in fake.messages if ts != first][0]
        await eventually(lambda: fake.messages[second]["text"] == "二つ目の答えです。"
                         and bool(buttons(fake, second)))
        assert fake.messages[second]["thread_ts"] == T0  # a new answer in the same thread
        assert buttons(fake, second) == ["rinna_regenerate", "rinna_feedback"]
        assert fake.messages[first]["text"] == "最初の答えです。"  # kept, only the button went

        # The old answer is not the newest: 「もう一度」 on it is refused.
        await press(slack, first, "rinna_regenerate", "regenerate")
        await eventually(lambda: len(ephemerals(fake, "U1")) == 1)
        assert "いちばん新しい" in ephemerals(fake, "U1")[0]

        await ask(slack, T1, "次の質問", settled=2, thread_ts=T0)
        assert "二つ目の答えです。" in generator.prompts[-1]
        assert "最初の答えです。" not in generator.prompts[-1]


async def test_feedback_is_one_vote_per_person_and_a_second_press_changes_it(
        tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    async with app(settings.database_path, tokenizer, settings, fake,
                   scripted(["答えです。"])) as slack:
        await ask(slack)
        ts = await the_answer(slack)
        store = slack.chat.store
        await press(slack, ts, "rinna_feedback", "good")
        await eventually(lambda: len(ephemerals(fake, "U1")) == 1)
        await press(slack, ts, "rinna_feedback", "bad")
        await eventually(lambda: len(ephemerals(fake, "U1")) == 2)
        assert await store.feedback_counts("slack") == {"good": 0, "bad": 1}
        await press(slack, ts, "rinna_feedback", "good", user="U2")
        await eventually(lambda: len(ephemerals(fake, "U2")) == 1)
        assert await store.feedback_counts("slack") == {"good": 1, "bad": 1}
        assert set(ephemerals(fake, "U1")) == {"フィードバックをありがとうございます。"}
        # A ts names a message only within its channel: the same ts pressed elsewhere is not
        # this answer.
        await press(slack, ts, "rinna_feedback", "good", user="U3", channel="C9")
        await eventually(lambda: len(ephemerals(fake, "U3")) == 1)
        assert ephemerals(fake, "U3") == ["この回答の記録が見つかりません。"]
        assert await store.feedback_counts("slack") == {"good": 1, "bad": 1}


async def test_the_buttons_work_after_a_restart(
        tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    database = settings.database_path
    async with app(database, tokenizer, settings, fake, scripted(["答えです。"])) as slack:
        await ask(slack)
        first = await the_answer(slack)
    # a new process: new store connection, chat service, app and handlers
    async with app(database, tokenizer, settings, fake,
                   scripted(["新しい答えです。"])) as slack:
        await press(slack, first, "rinna_feedback", "good")
        await eventually(lambda: len(ephemerals(fake, "U1")) == 1)
        assert await slack.chat.store.feedback_counts("slack") == {"good": 1, "bad": 0}
        await press(slack, first, "rinna_regenerate", "regenerate")
        await eventually(lambda: len(fake.messages) == 2
                         and buttons(fake, first) == ["rinna_feedback"])
        await eventually(lambda: any(m["text"] == "新しい答えです。" and not m["streaming"]
                                     for m in fake.messages.values()))
        turns = await slack.turns(KEY)
        assert [t.text for t in turns] == ["質問です", "新しい答えです。"]


@pytest.mark.parametrize("method", ["conversations.replies", "chat.update"])
async def test_a_rate_limit_on_retiring_the_old_answer_costs_only_its_button(
        tokenizer: Tokenizer, settings: Settings, fake: FakeSlack, method: str) -> None:
    """Retiring is cosmetic: a rate limit on reading the old answer back or on editing it is
    not waited out (up to 3 x 30 s before the new answer starts); the new answer goes on."""
    generator = scripted(["最初の答えです。", "二つ目の答えです。"])
    async with app(settings.database_path, tokenizer, settings, fake, generator) as slack:
        await ask(slack)
        first = await the_answer(slack)
        waits: list[float] = []

        async def no_wait(seconds: float) -> None:
            waits.append(seconds)

        slack.service.handlers.api.sleep = no_wait
        # The old answer's read-back or edit (retiring is the only call about it now).
        fake.fail(method, "ratelimited", status=429, headers={"Retry-After": "30"},
                  ts=first if method == "chat.update" else None)
        await press(slack, first, "rinna_regenerate", "regenerate")
        await eventually(lambda: len(fake.messages) == 2
                         and not any(m["streaming"] for m in fake.messages.values()))
        second = [ts for ts in fake.messages if ts != first][0]
        await eventually(lambda: fake.messages[second]["text"] == "二つ目の答えです。"
                         and bool(buttons(fake, second)))
        await eventually(lambda: slack.service.handlers.pressed == {"regenerate:done": 1})
        assert not fake.failures[method]  # the rate limit was met
        assert waits == []  # and not waited out
        # the old answer keeps 「もう一度」 (the chat service refuses it there anyway)
        assert buttons(fake, first) == ["rinna_regenerate", "rinna_feedback"]
        assert buttons(fake, second) == ["rinna_regenerate", "rinna_feedback"]


@pytest.mark.parametrize("streaming", [True, False], ids=["native-stream", "chat.update"])
async def test_a_workspace_without_feedback_buttons_gets_plain_thumbs(
        tokenizer: Tokenizer, settings: Settings, streaming: bool) -> None:
    """Slack refuses the feedback_buttons element (invalid_blocks): the answer is shown with
    plain 👍/👎 buttons, later answers use them straight away, and they vote like the others."""
    fake = await FakeSlack(keep_messages=True, streaming=streaming,
                           feedback_buttons=False).start()
    generator = scripted(["答えです。", "二つ目の答えです。", "三つ目です。"])
    plain = ["rinna_feedback_good", "rinna_feedback_bad"]
    try:
        async with app(settings.database_path, tokenizer, settings, fake, generator) as slack:
            await ask(slack)
            first = await the_answer(slack)
            await eventually(lambda: fake.messages[first]["text"] == "答えです。"
                             and bool(buttons(fake, first)))
            assert buttons(fake, first) == ["rinna_regenerate", *plain]
            refused = [c for c in fake.calls if c.params.get("_error") == "invalid_blocks"]
            assert len(refused) == 1  # tried once, then plain buttons

            # remembered: the next answer (another thread) is not refused first
            await ask(slack, T1, "別の質問", settled=2)
            other = await the_answer(slack, f"{C1}:{T1}")
            await eventually(lambda: fake.messages[other]["text"] == "二つ目の答えです。"
                             and bool(buttons(fake, other)))
            assert buttons(fake, other) == ["rinna_regenerate", *plain]
            assert [c for c in fake.calls if c.params.get("_error") == "invalid_blocks"] \
                == refused

            store = slack.chat.store
            await press(slack, first, "rinna_feedback_good", "good")
            await eventually(lambda: len(ephemerals(fake, "U1")) == 1)
            assert await store.feedback_counts("slack") == {"good": 1, "bad": 0}
            await press(slack, first, "rinna_feedback_bad", "bad", user="U2")
            await eventually(lambda: len(ephemerals(fake, "U2")) == 1)
            assert await store.feedback_counts("slack") == {"good": 1, "bad": 1}
            assert ephemerals(fake, "U1") == ["フィードバックをありがとうございます。"]

            # 「もう一度」: the old answer keeps only the plain 👍/👎
            await press(slack, first, "rinna_regenerate", "regenerate")
            await eventually(lambda: buttons(fake, first) == plain)
    finally:
        await fake.close()


# ----- /rinna status --------------------------------------------------------------------------
async def test_rinna_status_is_shown_to_the_asker_alone(
        chat: ChatService, settings: Settings, fake: FakeSlack) -> None:
    import json

    from adapters.slack_service import build_slack_service
    from bot.core.status import Status

    status = Status(model="tiny-neox", device="cpu", quantisation="none",
                    generator=chat.generator, store=chat.store)  # type: ignore[arg-type]
    for source, expected in ((status, "・モデル：tiny-neox"), (None, "状態を取得できません。")):
        service = build_slack_service(chat, slack_settings(settings, fake), status=source,
                                      host="127.0.0.1")
        await service.start()
        try:
            async with aiohttp.ClientSession() as http:
                slack = Slack(service, fake, chat, http)
                code, body = await slack.command("status")
        finally:
            await service.close()
        assert code == 200
        reply = json.loads(body)
        assert reply["response_type"] == "ephemeral" and expected in reply["text"]
    assert not fake.posts()  # nothing in the channel


async def test_one_regenerate_press_delivered_twice_answers_once(
        tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    generator = scripted(["最初の答えです。", "二つ目の答えです。"])
    async with app(settings.database_path, tokenizer, settings, fake, generator) as slack:
        await ask(slack)
        first = await the_answer(slack)
        message = {"type": "message", "ts": first, "thread_ts": T0,
                   "text": fake.messages[first]["text"], "blocks": fake.messages[first]["blocks"]}
        body = interaction_form(block_action(C1, message, "rinna_regenerate", "regenerate"))
        for _ in range(2):
            status, _ = await slack.raw(body, {"Content-Type": "application/x-www-form-urlencoded",
                                               **sign(body)})
            assert status == 200
        await eventually(lambda: sum(slack.service.handlers.pressed.values()) == 2)
        assert len(fake.messages) == 2  # one new answer
        assert len(generator.prompts) == 2
        # the repeat is recognised as the same press (not refused as a second one)
        assert slack.service.handlers.pressed == {"regenerate:done": 2}
        assert ephemerals(fake, "U1") == []


async def test_a_press_that_fails_inside_tells_the_presser_in_short(
        tokenizer: Tokenizer, settings: Settings, fake: FakeSlack) -> None:
    """The press's error boundary: the database gone mid-press is logged and the presser gets
    the generic line (ephemeral), not silence and not the exception's text."""
    async with app(settings.database_path, tokenizer, settings, fake,
                   scripted(["答えです。"])) as slack:
        await ask(slack)
        ts = await the_answer(slack)
        await slack.chat.store.close()
        await press(slack, ts, "rinna_feedback", "good")
        await eventually(lambda: len(ephemerals(fake, "U1")) == 1)
        assert ephemerals(fake, "U1") == [RinnaError.user_message]
        assert slack.service.handlers.pressed == {"feedback:failed": 1}
