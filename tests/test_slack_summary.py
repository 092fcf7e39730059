"""「要約」 on Slack over real HTTP against the fake Web API: the message shortcut, a mention
saying 要約 in a thread, and `/rinna 要約` (the channel's last messages), each answered once in
the thread, with the access rules of any answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import (BOT_TOKEN, BOT_USER, SIGNING_SECRET, TEAM, FakeSlack, mention,
                               message_shortcut)
from tests.test_slack_ai import interact
from tests.test_slack_app import T0, Slack, running, scripted_chat

SHORTCUT = "rinna_summary"


def thread(channel: str, root: str, count: int) -> list[dict[str, Any]]:
    items = []
    for i in range(count):
        ts = root if i == 0 else f"{root[:-6]}{int(root[-6:]) + i:06d}"
        own = i % 2 == 1
        item: dict[str, Any] = {"type": "message", "ts": ts, "thread_ts": root,
                                "text": f"猫の話{i}", "user": BOT_USER if own else "U2"}
        if own:
            item["bot_id"] = "BBOT"
        items.append(item)
    return items


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(keep_messages=True).start()
    yield slack
    await slack.close()


def slack_settings(settings: Settings, fake: FakeSlack, **extra: Any) -> Settings:
    return settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_signing_secret": SecretStr(SIGNING_SECRET),
        "slack_port": 0, "slack_api_url": fake.api_url, **extra})


@pytest.fixture
async def harness(store: HistoryStore, tokenizer: Tokenizer, settings: Settings,
                  fake: FakeSlack) -> AsyncIterator[tuple[Slack, ScriptedGenerator]]:
    settings = slack_settings(settings, fake, blocked_users=frozenset({"U9"}),
                              summary_channel_messages=5)
    chat, generator = scripted_chat(store, tokenizer, settings, ["スレッドの要約です。"])
    async with running(chat, settings, fake) as slack:
        yield slack, generator


def summary_text(slack: Slack, channel: str, thread_ts: str) -> str:
    (placeholder,) = [p for p in slack.fake.posts(channel, thread_ts)]
    return slack.fake.texts_of(placeholder.params["_ts"])[-1]


async def test_the_shortcut_summarises_the_thread_in_it_once(harness) -> None:  # noqa: ANN001
    slack, generator = harness
    slack.fake.threads[("C1", T0)] = thread("C1", T0, 30)
    target = slack.fake.threads[("C1", T0)][7]
    press = message_shortcut("C1", target, user="U1", callback_id=SHORTCUT)
    assert await interact(slack, press) == 200
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    assert summary_text(slack, "C1", T0) == "これまでの30件のメッセージの要約です。\nスレッドの要約です。"
    (prompt,) = generator.prompts
    assert "猫の話0" in prompt and "猫の話29" in prompt  # the whole thread, not up to the press
    assert "利用者: 猫の話0" in prompt and "rinna: 猫の話1" in prompt  # who wrote what
    assert generator.owners == ["slack:U1"]  # the presser's share
    turns = await slack.turns(ConversationKey("slack", TEAM, "C1", T0))
    assert [t.text for t in turns[-2:]] == ["要約", summary_text(slack, "C1", T0)]
    assert await interact(slack, press) == 200  # the same press again: not answered again
    await slack.settled(2)
    assert len(generator.prompts) == 1 and len(slack.fake.posts("C1", T0)) == 1


async def test_a_mention_saying_youyaku_in_a_thread_summarises_it(harness) -> None:  # noqa: ANN001
    slack, generator = harness
    slack.fake.threads[("C1", T0)] = thread("C1", T0, 12)
    await slack.event(mention("C1", "1710000000.000500", "要約", thread_ts=T0))
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    (prompt,) = generator.prompts
    assert prompt.startswith("ユーザー: 次の会話を日本語で短く要約してください。")
    assert "猫の話11" in prompt
    (placeholder,) = slack.fake.posts("C1", T0)
    assert slack.fake.texts_of(placeholder.params["_ts"])[-1].startswith("これまでの12件")


async def test_rinna_youyaku_summarises_the_channels_last_messages(harness) -> None:  # noqa: ANN001
    slack, generator = harness
    slack.fake.threads[("C1", "")] = [
        {"type": "message", "ts": f"1709000000.{i:06d}", "user": "U2", "text": f"雑談{i}"}
        for i in range(1, 9)]
    status, _ = await slack.command("要約")
    assert status == 200
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    reads = [c for c in slack.fake.called("conversations.history")
             if str(c.params.get("limit")) == "6"]  # SUMMARY_CHANNEL_MESSAGES and the question
    assert len(reads) == 1
    (prompt,) = generator.prompts
    assert "雑談8" in prompt and "雑談4" in prompt and "雑談3" not in prompt  # the last 5
    assert "要約<NL>" not in prompt.split("会話：", 1)[1]  # not its own posted question
    question, placeholder = slack.fake.posts("C1")[:2]
    assert placeholder.params["thread_ts"] == question.params["_ts"]  # in the question's thread


async def test_a_blocked_person_gets_no_summary(harness) -> None:  # noqa: ANN001
    slack, generator = harness
    slack.fake.threads[("C1", T0)] = thread("C1", T0, 5)
    target = slack.fake.threads[("C1", T0)][2]
    assert await interact(slack, message_shortcut("C1", target, user="U9",
                                                  callback_id=SHORTCUT)) == 200
    await slack.settled(1)
    assert slack.outcomes() == {"denied": 1}
    assert generator.prompts == [] and slack.fake.posts("C1") == []
