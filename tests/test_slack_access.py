"""Who may use the bot on Slack, through the real AsyncApp over signed HTTP: each access setting
lets the allowed through and refuses the rest silently (no Web API call but the start-up
auth.test, nothing stored); a refused /rinna is told 「利用できません」 ephemerally."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bot.core.access import DENIED_MESSAGE
from bot.config import Settings
from bot.conversation import ConversationKey
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.slack_fakes import TEAM, FakeSlack, event_callback, mention, message, sign
from tests.test_slack_app import Slack, fake, running, scripted_chat, slack_settings  # noqa: F401

C1, C2 = "C1", "C2"
T0, T1, T2 = "1710000000.000100", "1710000000.000200", "1710000000.000300"


@asynccontextmanager
async def guarded(store: HistoryStore, tokenizer: Tokenizer, settings: Settings,
                  fake: FakeSlack, **access: Any) -> AsyncIterator[Slack]:  # noqa: F811
    ids = {k: frozenset(v) if isinstance(v, (set, frozenset, list)) else v
           for k, v in access.items()}
    configured = settings.model_copy(update=ids)
    chat, _ = scripted_chat(store, tokenizer, configured, ["答えです。"])
    async with running(chat, configured, fake) as slack:
        yield slack


async def send(slack: Slack, event: dict[str, Any], **body: Any) -> None:
    payload = json.dumps({**event_callback(event), **body})
    status, _ = await slack.raw(payload, {"Content-Type": "application/json", **sign(payload)})
    assert status == 200


async def refused_silently(slack: Slack, *keys: ConversationKey) -> None:
    assert {c.method for c in slack.fake.calls} <= {"auth.test"}, slack.fake.calls
    for key in keys:
        assert await slack.chat.store.find(key) is None, key


def key(channel: str, thread: str = "", team: str = TEAM) -> ConversationKey:
    return ConversationKey("slack", team, channel, thread)


async def test_allowed_workspaces(store, tokenizer, slack_settings, fake) -> None:  # noqa: F811
    async with guarded(store, tokenizer, slack_settings, fake,
                       allowed_workspaces={TEAM}) as slack:
        # another team's event, and a Slack Connect sender from another team in our channel
        await send(slack, mention(C1, T0, "よその質問"), team_id="TOTHER")
        await send(slack, {**mention(C1, T1, "外部の質問"), "user_team": "TOTHER"})
        await slack.settled(2)
        assert slack.outcomes() == {"denied": 2}
        await refused_silently(slack, key(C1, T0, "TOTHER"), key(C1, T1))
        await send(slack, mention(C1, T2, "質問"))
        await slack.settled(3)
        assert slack.outcomes() == {"denied": 2, "answered": 1}
        assert [p.params["thread_ts"] for p in fake.posts()] == [T2]


async def test_allowed_channels(store, tokenizer, slack_settings, fake) -> None:  # noqa: F811
    async with guarded(store, tokenizer, slack_settings, fake, allowed_channels={C1}) as slack:
        await send(slack, mention(C2, T0, "別チャンネル"))
        await send(slack, message(C2, T1, "別チャンネルのスレッド", thread_ts=T0))
        await slack.settled(2)
        await refused_silently(slack, key(C2, T0))
        await send(slack, mention(C1, T0, "質問"))
        await slack.settled(3)
        await send(slack, message(C1, T1, "続き", thread_ts=T0))  # a thread is its channel
        await slack.settled(4)
        assert slack.outcomes() == {"denied": 2, "answered": 2}
        assert {p.params["channel"] for p in fake.posts()} == {C1}


async def test_allowed_and_blocked_users(store, tokenizer, slack_settings, fake) -> None:  # noqa: F811
    async with guarded(store, tokenizer, slack_settings, fake, allowed_users={"U1", "U2"},
                       blocked_users={"U2"}) as slack:
        await send(slack, mention(C1, T0, "知らない人", user="U3"))
        await send(slack, mention(C1, T1, "ブロックされた人", user="U2"))
        await slack.settled(2)
        assert slack.outcomes() == {"denied": 2}
        await refused_silently(slack, key(C1, T0), key(C1, T1))
        await send(slack, mention(C1, T2, "許された人", user="U1"))
        await slack.settled(3)
        assert slack.outcomes() == {"denied": 2, "answered": 1}


async def test_blocked_user_in_a_followed_thread_is_not_stored(
        store, tokenizer, slack_settings, fake) -> None:  # noqa: F811
    async with guarded(store, tokenizer, slack_settings, fake, blocked_users={"U2"}) as slack:
        await send(slack, mention(C1, T0, "質問", user="U1"))
        await slack.settled(1)
        await send(slack, message(C1, T1, "割り込み", user="U2", thread_ts=T0))
        await slack.settled(2)
        assert slack.outcomes() == {"answered": 1, "denied": 1}
        assert "割り込み" not in [t.text for t in await slack.turns(key(C1, T0))]
        assert len(fake.posts()) == 1


async def test_dms_can_be_switched_off(store, tokenizer, slack_settings, fake) -> None:  # noqa: F811
    async with guarded(store, tokenizer, slack_settings, fake, allow_dms=False) as slack:
        await send(slack, message("D1", T0, "こんにちは", channel_type="im"))
        await slack.settled(1)
        assert slack.outcomes() == {"denied": 1}
        await refused_silently(slack, key("D1"))
        status, body = await slack.command("DMでの質問", channel="D1")
        assert status == 200 and DENIED_MESSAGE in json.loads(body)["text"]
        await send(slack, mention(C1, T0, "チャンネルでは答える"))
        await slack.settled(3)
        assert slack.outcomes() == {"denied": 2, "answered": 1}


async def test_refused_slash_command_is_told_ephemerally_and_posts_nothing(
        store, tokenizer, slack_settings, fake) -> None:  # noqa: F811
    async with guarded(store, tokenizer, slack_settings, fake, allowed_users={"U1"}) as slack:
        for text in ("質問です", "help"):
            status, body = await slack.command(text, user="U2")
            assert status == 200
            reply = json.loads(body)
            assert reply["response_type"] == "ephemeral"
            assert "利用できません" in reply["text"]
        assert slack.outcomes() == {"denied": 2}
        assert not fake.posts()
        await refused_silently(slack)
        status, body = await slack.command("質問です", user="U1")
        assert (status, body) == (200, "")
        await slack.settled(3)
        assert slack.outcomes() == {"denied": 2, "answered": 1}
