"""Hostile and heavy input through the real Slack AsyncApp over HTTP: one message cannot freeze
the loop, unsigned or malformed requests get a 4xx and at most one log line, a burst costs one
users.info per user and no auth.test, a long thread is read from its newest end, and bolt never
logs request bodies at INFO."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.slack_service import build_slack_service
from bot.core.chat import ChatService
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.slack_fakes import BOT_USER, SIGNING_SECRET, TEAM, FakeSlack, eventually, mention
from tests.test_slack_app import Slack, fake, running, scripted_chat, slack_settings  # noqa: F401

C1 = "C1"
T0 = "1710000000.000100"


@pytest.fixture
async def scripted(store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,  # noqa: F811
                   fake: FakeSlack) -> AsyncIterator[tuple[Slack, ScriptedGenerator]]:  # noqa: F811
    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["答えです。"])
    async with running(chat, slack_settings, fake) as harness:
        yield harness, generator


def signed(body: bytes, *, timestamp: str | None = None,
           secret: str = SIGNING_SECRET) -> dict[str, str]:
    stamp = timestamp or str(int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest.hexdigest()}"}


async def post(slack: Slack, body: bytes, headers: dict[str, str]) -> int:
    async with slack.http.post(slack.url, data=body, headers=headers) as response:
        await response.read()
        return response.status


# ----- one message cannot freeze the loop --------------------------------------------------
async def test_a_mention_of_40000_lt_is_acked_at_once_while_another_is_answered(
        scripted) -> None:
    slack, generator = scripted
    hostile = mention(C1, "1710000000.000900", "<" * 40_000)
    ordinary = asyncio.ensure_future(slack.event(mention(C1, T0, "ふつうの質問")))
    started = time.monotonic()
    status = await asyncio.wait_for(slack.event(hostile), 30)
    acked_in = time.monotonic() - started
    assert status == 200 and acked_in < 3.0, acked_in
    assert await ordinary == 200
    await slack.settled(2)
    assert slack.outcomes() == {"answered": 2}
    assert any("ふつうの質問" in prompt for prompt in generator.prompts)


async def test_text_beyond_slacks_limit_is_cut_before_parsing(scripted) -> None:
    slack, generator = scripted
    await slack.event(mention(C1, T0, "あ" * 100_000))
    await slack.settled(1)
    (turn, *_) = await slack.turns(ConversationKey("slack", TEAM, C1, T0))
    assert turn.speaker is Speaker.USER and len(turn.text) <= 40_000


# ----- requests that are not Slack's ------------------------------------------------------------
GARBAGE: list[tuple[str, bytes, str]] = [
    ("malformed json", b'{"type": "event_callback", ', "application/json"),
    ("json array", b"[1, 2, 3]", "application/json"),
    ("json string", b'"hello"', "application/json"),
    ("not utf-8", b"\xff\xfe\xfd{\x80}", "application/json"),
    ("payload garbage", b"payload=%7Bnot-json", "application/x-www-form-urlencoded"),
    ("payload array", b"payload=%5B1%5D", "application/x-www-form-urlencoded"),
    ("form not utf-8", b"payload=\xff\xfe", "application/x-www-form-urlencoded"),
    ("empty", b"", "application/json"),
]


@pytest.mark.parametrize(("name", "body", "content_type"), GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_garbage_gets_a_4xx_and_at_most_one_log_line(
        scripted, caplog: pytest.LogCaptureFixture, name: str, body: bytes,
        content_type: str) -> None:
    slack, _ = scripted
    caplog.set_level(logging.DEBUG)
    # Unsigned, badly signed, or with a timestamp that is no number: refused before the body
    # is read as anything (401); signed garbage: 400.
    for headers, want in (({}, 401), (signed(body, secret="wrong"), 401),
                          ({**signed(body), "X-Slack-Request-Timestamp": "not-a-number"}, 401),
                          ({**signed(body), "X-Slack-Request-Timestamp": "１２３"}, 401),
                          (signed(body), 400)):
        caplog.clear()
        status = await post(slack, body, {"Content-Type": content_type, **headers})
        assert status == want, (name, headers, status)
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert len(records) <= 1, [r.getMessage() for r in records]
        assert not any(r.exc_info for r in caplog.records), name
        assert "Traceback" not in caplog.text
    # the endpoint still serves Slack afterwards, and nothing reached a listener
    assert slack.outcomes() == {}
    assert await slack.event(mention(C1, T0, "質問")) == 200
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}


async def test_bolt_does_not_log_request_bodies_at_info(
        chat: ChatService, slack_settings: Settings, fake: FakeSlack,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """What setup_logging arranges (root at INFO, slack_bolt at WARNING) must hold for the
    loggers bolt makes for itself: a bad signature reaching bolt logs no message text."""
    from slack_bolt.request.async_request import AsyncBoltRequest

    caplog.set_level(logging.INFO)
    bolt = logging.getLogger("slack_bolt")
    level = bolt.level
    bolt.setLevel(logging.WARNING)
    try:
        service = build_slack_service(chat, slack_settings, host="127.0.0.1")
        body = json.dumps({"type": "event_callback", "team_id": TEAM,
                           "event": {"type": "app_mention", "text": "秘密の相談です"}},
                          ensure_ascii=False)
        response = await service.app.async_dispatch(AsyncBoltRequest(
            body=body, headers={"content-type": "application/json",
                                **signed(body.encode(), secret="wrong")}))
        project_level = logging.getLogger("rinna-bot").getEffectiveLevel()
    finally:
        bolt.setLevel(level)
    assert response.status == 401
    assert "秘密の相談です" not in caplog.text and "event_callback" not in caplog.text
    assert project_level == logging.INFO  # bolt left the project's own logger alone


# ----- cold-start storms --------------------------------------------------------------------
async def test_a_burst_costs_one_users_info_per_user_and_no_auth_test(scripted) -> None:
    slack, _ = scripted
    burst = [mention(C1, f"1710000001.{i:06d}", "<@U2> さんへ", user="U1") for i in range(40)]
    statuses = await asyncio.gather(*(slack.event(event) for event in burst))
    assert set(statuses) == {200}
    await slack.settled(len(burst))
    assert slack.outcomes() == {"answered": len(burst)}
    looked_up = sorted(c.params["user"] for c in slack.fake.called("users.info"))
    assert looked_up == ["U2"]  # the mentioned user's name; the author is kept by id only
    assert len(slack.fake.called("auth.test")) == 1  # at start-up only


async def test_the_name_cache_is_bounded(scripted) -> None:
    slack, _ = scripted
    names = slack.service.handlers.names
    names.size = 3
    await names.lookup([f"U{i}" for i in range(10)])
    assert len(names) == 3
    assert len(slack.fake.called("users.info")) == 10


# ----- joining a long thread --------------------------------------------------------------------
def thread(count: int, *, mention_each: bool = False) -> list[dict[str, Any]]:
    messages = []
    for i in range(count):
        text = f"<@UX{i:05d}> {i}番目のメッセージ" if mention_each else f"{i}番目のメッセージ"
        messages.append({"type": "message", "user": "U1", "text": text,
                         "ts": f"1700000000.{i:06d}", "thread_ts": "1700000000.000000"})
    return messages


async def test_joining_a_10000_message_thread_reads_its_newest_messages(scripted) -> None:
    slack, generator = scripted
    root = "1700000000.000000"
    slack.fake.threads[(C1, root)] = thread(10_000)
    await slack.event(mention(C1, "1700000001.000000", "まとめて", thread_ts=root))
    await slack.settled(1)
    assert slack.outcomes() == {"answered": 1}
    turns = await slack.turns(ConversationKey("slack", TEAM, C1, root))
    texts = [t.text for t in turns]
    assert texts[-3:-1] == ["9999番目のメッセージ", "まとめて"]
    assert "9998番目のメッセージ" in texts
    assert "1999番目のメッセージ" not in texts
    assert "9999番目のメッセージ" in generator.prompts[-1]
    assert len(slack.fake.called("conversations.replies")) <= 10_000 // 200 + 1


async def test_names_are_looked_up_only_for_messages_that_fit(scripted) -> None:
    slack, _ = scripted
    root = "1700000000.000000"
    slack.fake.threads[(C1, root)] = thread(2_000, mention_each=True)
    await slack.event(mention(C1, "1700000001.000000", "要約して", thread_ts=root))
    await slack.settled(1)
    imported = len(await slack.turns(ConversationKey("slack", TEAM, C1, root))) - 2
    looked_up = {c.params["user"] for c in slack.fake.called("users.info")}
    assert 0 < imported < 2_000
    # the author, and the users mentioned in what can reach the prompt (with some slack)
    assert len(looked_up) <= imported * 2 + 1, (len(looked_up), imported)
    assert "UX01999" in looked_up and "UX00000" not in looked_up
    assert f"<@{BOT_USER}>" not in "".join(c.params["user"] for c in
                                          slack.fake.called("users.info"))


async def test_a_retry_is_dropped_before_its_text_is_parsed(scripted, monkeypatch) -> None:
    from adapters import slack_app

    slack, _ = scripted
    parsed: list[str] = []
    original = slack_app.to_plain

    def counting(text: str, names: Any) -> str:
        parsed.append(text)
        return original(text, names)

    monkeypatch.setattr(slack_app, "to_plain", counting)
    event = mention(C1, T0, "一度だけ読む")
    await slack.event(event, event_id="Ev1")
    await slack.event(event, event_id="Ev1", retry_num=1)
    await slack.event(event, event_id="Ev1", retry_num=2)
    await slack.settled(3)
    assert slack.outcomes() == {"answered": 1, "duplicate": 2}
    assert len(parsed) == 1


# ----- signed, but not in the shape Slack sends (issue 22) ---------------------------------------
def _form(fields: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(fields)


def _command_without(field: str) -> str:
    from urllib.parse import parse_qsl, urlencode

    from tests.slack_fakes import command_form

    return urlencode([(k, v) for k, v in parse_qsl(command_form("質問")) if k != field])


def _payload(payload: dict[str, Any]) -> str:
    from tests.slack_fakes import interaction_form

    return interaction_form(payload)


_BOT_MESSAGE = {"ts": "1710000000.000200", "text": "答え", "user": BOT_USER}
_ACTION_BASE = {"type": "block_actions", "team": {"id": TEAM}, "user": {"id": "U1"},
                "channel": {"id": C1}, "container": {"type": "message"},
                "trigger_id": "1.2.3", "response_url": "http://127.0.0.1:1/unused"}
_SHORTCUT_BASE = {"type": "message_action", "callback_id": "rinna_ask", "team": {"id": TEAM},
                  "user": {"id": "U1"}, "channel": {"id": C1}, "trigger_id": "1.2.4",
                  "message_ts": "1710000000.000300", "response_url": "http://127.0.0.1:1/u"}
MALFORMED: list[tuple[str, str, str]] = [
    ("event is a string", json.dumps({"type": "event_callback", "team_id": TEAM,
                                      "event_id": "Ev1", "event": "app_mention"}),
     "application/json"),
    ("event is a list", json.dumps({"type": "event_callback", "team_id": TEAM,
                                    "event_id": "Ev2", "event": [1, 2]}), "application/json"),
    ("actions not a list", _payload({**_ACTION_BASE, "message": _BOT_MESSAGE,
                                     "actions": {"action_id": "rinna_stop"}}),
     "application/x-www-form-urlencoded"),
    ("action without action_id", _payload({**_ACTION_BASE, "message": _BOT_MESSAGE,
                                           "actions": [{"value": "good"}]}),
     "application/x-www-form-urlencoded"),
    ("action not an object", _payload({**_ACTION_BASE, "message": _BOT_MESSAGE,
                                       "actions": ["rinna_stop"]}),
     "application/x-www-form-urlencoded"),
    ("feedback message not an object", _payload({
        **_ACTION_BASE, "message": "答え",
        "actions": [{"action_id": "rinna_feedback", "type": "feedback_buttons",
                     "value": "good"}]}), "application/x-www-form-urlencoded"),
    ("shortcut message not an object", _payload({**_SHORTCUT_BASE, "message": ["x"]}),
     "application/x-www-form-urlencoded"),
    ("command without channel_id", _command_without("channel_id"),
     "application/x-www-form-urlencoded"),
    ("command without user_id", _command_without("user_id"),
     "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize(("name", "body", "content_type"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
async def test_a_signed_request_in_the_wrong_shape_gets_a_4xx_without_a_traceback(
        scripted, caplog: pytest.LogCaptureFixture, name: str, body: str,
        content_type: str) -> None:
    slack, _ = scripted
    caplog.set_level(logging.DEBUG)
    raw = body.encode()
    status = await post(slack, raw, {"Content-Type": content_type, **signed(raw)})
    assert 400 <= status < 500, (name, status)
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) <= 1, [r.getMessage() for r in records]
    assert not any(r.exc_info for r in caplog.records), name
    assert "Traceback" not in caplog.text
    assert slack.outcomes() == {}
    assert slack.fake.posts() == []  # nothing was said to anyone


@pytest.mark.parametrize("stamp", ["9" * 5000, "1" + "0" * 4400, "0" * 20 + str(int(time.time()))])
async def test_an_absurd_timestamp_is_refused_before_it_is_read_as_a_number(
        scripted, caplog: pytest.LogCaptureFixture, stamp: str) -> None:
    slack, _ = scripted
    caplog.set_level(logging.DEBUG)
    body = json.dumps(event_callback_for_test()).encode()
    status = await post(slack, body, {"Content-Type": "application/json",
                                      **signed(body, timestamp=stamp)})
    assert status == 401
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.INFO]) <= 1


def event_callback_for_test() -> dict[str, Any]:
    from tests.slack_fakes import event_callback

    return event_callback(mention(C1, T0, "質問"))


def _envelope(number: int, body: str, content_type: str) -> dict[str, Any]:
    """A Socket Mode envelope carrying what the HTTP test posts."""
    from urllib.parse import parse_qsl

    if content_type == "application/json":
        return {"envelope_id": f"bad-{number}", "type": "events_api",
                "accepts_response_payload": False, "payload": json.loads(body)}
    form = dict(parse_qsl(body))
    if "payload" in form:
        return {"envelope_id": f"bad-{number}", "type": "interactive",
                "accepts_response_payload": False, "payload": json.loads(form["payload"])}
    return {"envelope_id": f"bad-{number}", "type": "slash_commands",
            "accepts_response_payload": True, "payload": form}


async def test_socket_mode_refuses_the_same_shapes_before_bolt(
        chat: ChatService, slack_settings: Settings, fake: FakeSlack,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """Socket Mode requests have no HTTP layer: each malformed one is acked (no retry), logged
    once without a traceback, and reaches no listener; a good one after them is answered."""
    from pydantic import SecretStr

    from tests.slack_fakes import APP_TOKEN, event_callback

    settings = slack_settings.model_copy(update={"slack_app_token": SecretStr(APP_TOKEN),
                                                 "slack_signing_secret": None})
    service = build_slack_service(chat, settings, host="127.0.0.1")
    await asyncio.wait_for(service.start(), 30)
    caplog.set_level(logging.DEBUG)
    try:
        for number, (_, body, content_type) in enumerate(MALFORMED):
            await fake.push(_envelope(number, body, content_type))
        envelopes = {f"bad-{n}" for n in range(len(MALFORMED))}
        await fake.wait_for(lambda: envelopes <= {a.get("envelope_id") for a in fake.acks})
        assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text
        refusals = [r for r in caplog.records if "wrong shape" in r.getMessage()]
        assert len(refusals) == len(MALFORMED)
        assert dict(service.handlers.outcomes) == {}
        await fake.push({"envelope_id": "good", "type": "events_api",
                         "accepts_response_payload": False,
                         "payload": event_callback(mention(C1, T0, "やあ"))})
        await eventually(lambda: service.handlers.outcomes.total() >= 1)
        assert dict(service.handlers.outcomes) == {"answered": 1}
    finally:
        await asyncio.wait_for(service.close(), 30)
