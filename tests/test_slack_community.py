"""Community settings through the real slack-bolt app over HTTP (signed requests) against the
local fake Web API: `/rinna config` for the channel and the workspace, `@rinna 設定 …` in a
thread, answers for the person alone, the privilege rule from users.info (Slack Connect guests
never admins here), a switched-off channel, and the Home tab published on app_home_opened."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bot.core.chat import ChatConfig, ChatService
from bot.core.community import Community, HostPolicy
from bot.config import Settings
from bot.conversation import ConversationKey
from bot.core.notices import SWITCHED_OFF
from bot.core.personas import READY
from bot.ports.community import Scope
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import (BOT_USER, TEAM, FakeSlack, eventually, mention, message,
                               message_shortcut)
from tests.test_slack_ai import interact
from tests.test_slack_app import Slack, running, slack_settings  # noqa: F401 (a fixture)

C1 = "C1"
T0 = "1710000000.000100"
T1 = "1710000000.000200"
T2 = "1710000000.000300"
ADMIN, MEMBER = "U1", "U2"


def persona_head(name: str) -> str:
    user, system = READY[name].turns
    return f"ユーザー: {user.text}<NL>システム: {system.text}<NL>"


@pytest.fixture
def script() -> ScriptedGenerator:
    return ScriptedGenerator(default="はい。")


@pytest.fixture
def chat(store: HistoryStore, script: ScriptedGenerator, tokenizer: Tokenizer,
         settings: Settings) -> ChatService:
    community = Community(store, HostPolicy.from_settings(settings), tokenizer)
    return ChatService(store, script, tokenizer,
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0),
                       community=community)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = await FakeSlack(admins=frozenset({ADMIN})).start()
    yield slack
    await slack.close()


@pytest.fixture
async def slack(chat: ChatService, slack_settings: Settings, fake: FakeSlack
                ) -> AsyncIterator[Slack]:
    async with running(chat, slack_settings, fake) as harness:
        yield harness


async def said(slack: Slack, text: str, user: str = ADMIN) -> dict[str, object]:
    status, body = await slack.command(text, user=user)
    assert status == 200
    answer: dict[str, object] = json.loads(body)
    assert answer["response_type"] == "ephemeral"
    return answer


async def test_a_channel_persona_reaches_the_prompt_and_a_thread_override_beats_it(
        slack: Slack, script: ScriptedGenerator, store: HistoryStore) -> None:
    answer = await said(slack, "config channel set persona keigo")
    assert answer["text"] == "このチャンネルの persona を変更しました（上位の設定 → keigo）。"
    await slack.event(mention(C1, T0, "こんにちは"))
    await slack.settled(2)
    assert script.prompts[-1] == f"{persona_head('keigo')}ユーザー: こんにちは<NL>システム: "

    await slack.event(mention(C1, T1, "設定 set persona casual", thread_ts=T0))
    await eventually(lambda: bool(slack.fake.called("chat.postEphemeral")))
    (told,) = slack.fake.called("chat.postEphemeral")
    assert (told.params["user"], told.params["thread_ts"]) == (ADMIN, T0)
    assert "このスレッドの persona を変更しました" in told.text
    await slack.event(message(C1, T2, "元気？", thread_ts=T0))  # the next answer, no restart
    await eventually(lambda: len(script.prompts) == 2)
    assert script.prompts[-1].startswith(persona_head("casual"))
    assert [(r.scope, r.key, r.new) for r in reversed(await store.audit())] == [
        (Scope("slack", TEAM, C1), "persona", "keigo"),
        (Scope("slack", TEAM, C1, T0), "persona", "casual")]
    assert not slack.fake.posts(C1, T0)[0].text.startswith("このスレッド")  # nothing public


async def test_members_and_slack_connect_guests_are_refused_and_nothing_changes(
        chat: ChatService, slack_settings: Settings, store: HistoryStore) -> None:
    fake = await FakeSlack(admins=frozenset({ADMIN, MEMBER}),
                           external=frozenset({MEMBER})).start()
    try:
        async with running(chat, slack_settings.model_copy(
                update={"slack_api_url": fake.api_url}), fake) as slack:
            guest = await said(slack, "config workspace set enabled off", user=MEMBER)
            assert guest["text"] == ("設定を変更できるのは、このサーバー（ワークスペース）"
                                     "の管理者だけです。")
            bad = await said(slack, "config set temperature 50")
            assert bad["text"] == "temperature は 0.1 から 1.5 までの数で指定してください。"
            shown = await said(slack, "config show", user=MEMBER)  # anyone may look
            assert "enabled: on（既定）" in str(shown["text"])
    finally:
        await fake.close()
    assert await store.audit() == []


async def test_a_switched_off_channel_gets_no_answer_and_no_placeholder(
        slack: Slack, script: ScriptedGenerator) -> None:
    await said(slack, "config set enabled off")
    await slack.event(mention(C1, T0, "聞こえますか"))
    await slack.settled(2)
    assert slack.fake.posts(C1) == [] and script.prompts == []
    await said(slack, "config reset enabled")
    await slack.event(mention(C1, T1, "今度は？"))
    await eventually(lambda: len(slack.fake.posts(C1)) == 1)


async def test_the_home_tab_shows_admins_their_settings_and_others_nothing(
        slack: Slack) -> None:
    await said(slack, "config workspace set temperature 0.5")
    await said(slack, "config set persona concise")
    await slack.event({"type": "app_home_opened", "user": ADMIN, "channel": "D1",
                       "tab": "home"})
    await slack.event({"type": "app_home_opened", "user": MEMBER, "channel": "D2",
                       "tab": "home"})
    await eventually(lambda: len(slack.fake.called("views.publish")) == 2)
    admin_view, member_view = (json.loads(call.params["view"]) if isinstance(
        call.params["view"], str) else call.params["view"]
        for call in sorted(slack.fake.called("views.publish"),
                           key=lambda c: c.params["user_id"]))
    admin_text = "\n".join(b["text"]["text"] for b in admin_view["blocks"])
    assert "*<#C1>*" in admin_text and "persona: concise（チャンネル）" in admin_text
    assert "temperature: 0.5（サーバー/ワークスペース）" in admin_text
    member_text = "\n".join(b["text"]["text"] for b in member_view["blocks"])
    assert "C1" not in member_text and "persona" not in member_text
    assert "管理者だけ" in member_text


async def test_status_shows_the_settings_in_force_here(slack: Slack) -> None:
    await said(slack, "config set max_new_tokens 64")
    status = await said(slack, "status", user=MEMBER)
    assert "max_new_tokens: 64（チャンネル）" in str(status["text"])


async def test_mention_only_in_a_thread_answers_mentions_alone(
        slack: Slack, script: ScriptedGenerator) -> None:
    await slack.event(mention(C1, T0, "はじめまして"))
    await eventually(lambda: len(script.prompts) == 1)
    await slack.event(mention(C1, T1, "設定 set mention_only on", thread_ts=T0))
    await eventually(lambda: bool(slack.fake.called("chat.postEphemeral")))
    await slack.event(message(C1, T2, "メンションなし", thread_ts=T0))
    await slack.settled(3)
    assert len(script.prompts) == 1  # not mentioned: ignored, no placeholder
    # a mention arrives as `message` first and `app_mention` second: answered, once
    t3 = "1710000000.000400"
    await slack.event(message(C1, t3, f"<@{BOT_USER}> メンションあり", thread_ts=T0))
    await slack.event(mention(C1, t3, "メンションあり", thread_ts=T0))
    await eventually(lambda: len(script.prompts) == 2)
    assert script.prompts[-1].endswith("ユーザー: メンションあり<NL>システム: ")
    await slack.settled(5)
    assert len(script.prompts) == 2


async def test_a_question_command_where_the_bot_is_off_is_told_so_alone(
        slack: Slack, script: ScriptedGenerator) -> None:
    await said(slack, "config set enabled off")
    told = await said(slack, "日本の首都は？", user=MEMBER)
    assert told["text"] == "この場所では rinna はオフになっています（管理者の設定）。"
    assert slack.fake.posts(C1) == [] and script.prompts == []


@pytest.mark.parametrize("callback_id", ["rinna_ask", "rinna_summary"],
                         ids=["rinna-ni-kiku", "youyaku"])
async def test_the_shortcut_where_the_bot_is_off_tells_the_presser_alone(
        slack: Slack, script: ScriptedGenerator, callback_id: str) -> None:
    """「rinna に聞く」 and 「要約」 like /rinna: told so through the response_url, nothing
    posted."""
    await said(slack, "config set enabled off")
    target = {"type": "message", "user": ADMIN, "ts": T0, "text": "日本の首都は？"}
    press = {**message_shortcut(C1, target, user=MEMBER, callback_id=callback_id),
             "response_url": slack.fake.response_url("shortcut")}
    assert await interact(slack, press) == 200
    await eventually(lambda: slack.outcomes().get("ignored") == 1)
    (response,) = slack.fake.responses
    assert response["text"] == SWITCHED_OFF and response["response_type"] == "ephemeral"
    assert slack.fake.posts(C1) == [] and script.prompts == []
    assert await slack.chat.store.find(ConversationKey("slack", TEAM, C1, T0)) is None


async def test_a_change_survives_a_restart(slack_settings: Settings, fake: FakeSlack,
                                           tokenizer: Tokenizer, settings: Settings) -> None:
    async def started() -> tuple[HistoryStore, ChatService, ScriptedGenerator]:
        store = await HistoryStore.open(settings.database_path)
        generator = ScriptedGenerator(default="はい。")
        community = Community(store, HostPolicy.from_settings(settings), tokenizer)
        return store, ChatService(store, generator, tokenizer, ChatConfig(
            prompt_budget=settings.prompt_budget, stream_interval_s=0.0),
            community=community), generator

    store, chat, _ = await started()
    try:
        async with running(chat, slack_settings, fake) as slack:
            await said(slack, "config set persona concise")
    finally:
        await store.close()
    store, chat, generator = await started()  # a new process: nothing cached
    try:
        async with running(chat, slack_settings, fake) as slack:
            await slack.event(mention(C1, T0, "こんにちは"))
            await eventually(lambda: len(generator.prompts) == 1)
    finally:
        await store.close()
    assert generator.prompts[0].startswith(persona_head("concise"))


async def test_a_personas_text_is_shown_as_text_never_as_markup(slack: Slack) -> None:
    await said(slack, "config set persona <!channel> を呼ばないで <https://x.example|ここ>")
    shown = str((await said(slack, "config show", user=MEMBER))["text"])
    assert "&lt;!channel&gt;" in shown and "<!channel>" not in shown
    assert "&lt;https://x.example|ここ&gt;" in shown
