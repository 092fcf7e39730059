"""One Slack Connect rule for every entry point (issue 22), through the real AsyncApp over
signed HTTP: with ALLOWED_WORKSPACES set, a person from another organisation in a shared
channel is refused a mention, a vote and the shortcut alike; an external person is never a
moderator unless their own team is allowed (users.info is not even asked)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bot.config import Settings
from bot.engine.tokenizer import Tokenizer
from tests.slack_fakes import (
    TEAM,
    FakeSlack,
    block_action,
    eventually,
    interaction_form,
    mention,
    message_shortcut,
    sign,
)
from tests.test_slack_app import C1, T0, T1, Slack
from tests.test_slack_controls import EndlessGenerator, app, ephemerals, scripted, the_answer

EXTERNAL = "TEXTERNAL"
NOT_ASKER = "この回答を止められるのは質問した人だけです。"


@asynccontextmanager
async def connect_app(tokenizer: Tokenizer, settings: Settings, fake: FakeSlack,
                      generator: Any, workspaces: set[str]) -> AsyncIterator[Slack]:
    configured = settings.model_copy(update={"allowed_workspaces": frozenset(workspaces)})
    async with app(configured.database_path, tokenizer, configured, fake, generator) as slack:
        yield slack


async def press_as(slack: Slack, ts: str, action_id: str, value: str, user: str,
                   team: str) -> None:
    """A press by `user`, whose own team is `team`, in our workspace's shared channel."""
    message = {"type": "message", "ts": ts, "thread_ts": T0,
               **{k: v for k, v in slack.fake.messages[ts].items() if k in ("text", "blocks")}}
    payload = block_action(C1, message, action_id, value, user=user)
    payload["user"]["team_id"] = team
    body = interaction_form(payload)
    status, _ = await slack.raw(body, {"Content-Type": "application/x-www-form-urlencoded",
                                       **sign(body)})
    assert status == 200


async def test_an_external_person_may_neither_ask_nor_vote_nor_use_the_shortcut(
        tokenizer: Tokenizer, settings: Settings) -> None:
    fake = await FakeSlack(keep_messages=True).start()
    try:
        async with connect_app(tokenizer, settings, fake, scripted(["答えです。"]),
                               {TEAM}) as slack:
            assert await slack.event(mention(C1, T0, "質問です")) == 200
            await slack.settled(1)
            ts = await the_answer(slack)
            # a mention from someone of another organisation: refused (as before)
            await slack.event({**mention(C1, T1, "外部の質問", user="U9"), "user_team": EXTERNAL})
            await slack.settled(2)
            assert slack.outcomes() == {"answered": 1, "denied": 1}
            # their vote: refused the same way, nothing recorded
            await press_as(slack, ts, "rinna_feedback", "good", "U9", EXTERNAL)
            await eventually(lambda: slack.service.handlers.pressed["denied"] == 1)
            assert await slack.chat.store.feedback_counts("slack") == {"good": 0, "bad": 0}
            # their shortcut on our answer: refused, nothing posted or stored
            shortcut = message_shortcut(C1, {"ts": T0, "text": "質問です", "user": "U1"},
                                        user="U9")
            shortcut["user"]["team_id"] = EXTERNAL
            body = interaction_form(shortcut)
            posts = len(fake.posts())
            status, _ = await slack.raw(body, {
                "Content-Type": "application/x-www-form-urlencoded", **sign(body)})
            assert status == 200
            await slack.settled(3)
            assert slack.outcomes() == {"answered": 1, "denied": 2}
            assert len(fake.posts()) == posts
            # a person of our own team is still heard
            await press_as(slack, ts, "rinna_feedback", "good", "U2", TEAM)
            await eventually(lambda: len(ephemerals(fake, "U2")) == 1)
            assert await slack.chat.store.feedback_counts("slack") == {"good": 1, "bad": 0}
    finally:
        await fake.close()


async def test_an_external_admin_is_no_moderator_unless_their_team_is_allowed(
        tokenizer: Tokenizer, settings: Settings) -> None:
    fake = await FakeSlack(keep_messages=True, admins=frozenset({"U2"})).start()
    generator = EndlessGenerator()
    try:
        # no ALLOWED_WORKSPACES: anyone may use the bot, but an external admin moderates nothing
        async with connect_app(tokenizer, settings, fake, generator, set()) as slack:
            await slack.event(mention(C1, T0, "止まらない話をして"))
            ts = await the_answer(slack)
            await eventually(lambda: generator.running == 1)
            await press_as(slack, ts, "rinna_stop", "stop", "U2", EXTERNAL)
            await eventually(lambda: bool(ephemerals(fake, "U2")))
            assert ephemerals(fake, "U2") == [NOT_ASKER] and generator.running == 1
            assert all(c.params.get("user") != "U2" for c in fake.called("users.info"))
            await press_as(slack, ts, "rinna_stop", "stop", "U1", TEAM)  # the asker may
            await slack.settled(1)
        # their team listed: their admins count as moderators
        generator = EndlessGenerator()
        settings = settings.model_copy(update={"database_path": settings.database_path.with_name(
            "second.sqlite3")})
        async with connect_app(tokenizer, settings, fake, generator, {TEAM, EXTERNAL}) as slack:
            await slack.event(mention(C1, "1710000000.000900", "止まらない話をして"))
            ts = await the_answer(slack, f"{C1}:1710000000.000900")
            await eventually(lambda: generator.running == 1)
            await press_as(slack, ts, "rinna_stop", "stop", "U2", EXTERNAL)
            await slack.settled(1)
            assert generator.running == 0
            assert any(c.params.get("user") == "U2" for c in fake.called("users.info"))
    finally:
        await fake.close()
