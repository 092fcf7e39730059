"""The front door: the policy every platform shares, driven with the real chat service, the
real SQLite store and a scripted generator (the platforms' own tests drive it end to end)."""

from __future__ import annotations

import logging

import pytest

from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.core.access import DENIED_MESSAGE, AccessPolicy, AccessRequest
from bot.core.chat import ChatService
from bot.core.front_door import FrontDoor, Result, earlier_turns
from bot.core.front_events import Command, EarlierMessage, Event, Writer, command_word
from bot.core.notices import RESET_DONE
from storage.history import HistoryStore
from tests.fakes import RecordingSink

KEY = ConversationKey("test", "W1", "C1", "T1")


def event(delivery_key: str, text: str, sink: RecordingSink, **fields: object) -> Event:
    return Event(KEY, delivery_key, text, sink, writer="U1", **fields)  # type: ignore[arg-type]


async def texts(store: HistoryStore) -> list[tuple[Speaker, str]]:
    conversation = await store.find(KEY)
    if conversation is None:
        return []
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 50))]


async def test_a_question_is_answered_and_a_redelivery_dropped(scripted: ChatService,
                                                               store: HistoryStore) -> None:
    door = FrontDoor(scripted)
    sink = RecordingSink()
    assert await door.receive(event("m1", "富士山の高さは？", sink)) == "answered"
    again = RecordingSink()
    assert await door.receive(event("m1", "富士山の高さは？", again)) == Result.DUPLICATE
    assert again.events == []  # nothing said, nothing stored twice
    assert [s for s, _ in await texts(store)] == [Speaker.USER, Speaker.SYSTEM]


async def test_access_is_judged_and_logged_once_before_anything_is_stored(
        scripted: ChatService, store: HistoryStore, caplog: pytest.LogCaptureFixture) -> None:
    door = FrontDoor(scripted, AccessPolicy(blocked=frozenset({"U9"})))
    sink = RecordingSink()
    caplog.set_level(logging.DEBUG, logger="bot.core.front_door")
    refused = AccessRequest("W1", "C1", "U9")
    assert await door.receive(event("m1", "こんにちは", sink, access=(refused,))) == "denied"
    assert sink.events == [] and await store.find(KEY) is None
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        "user U9 in W1/C1 refused: blocked user"]
    assert DENIED_MESSAGE  # the adapters tell it where the platform lets them


async def test_reset_is_once_and_confirmed_in_the_conversation(scripted: ChatService,
                                                               store: HistoryStore) -> None:
    door = FrontDoor(scripted)
    await door.receive(event("m1", "最初の質問", RecordingSink()))
    sink = RecordingSink()
    assert await door.receive(event("r1", "", sink, command=Command.RESET)) == Result.RESET
    assert sink.events[-1] == ("finish", RESET_DONE)
    assert await texts(store) == []  # a new conversation begins
    # a redelivery of the same reset (past the in-memory check): resets nothing again
    await door.receive(event("m2", "二つ目", RecordingSink()))
    assert await door.receive(event("r1", "", RecordingSink(), command=Command.RESET,
                                    admitted=True)) == Result.DUPLICATE
    assert len(await texts(store)) == 2


async def test_help_and_status_are_said_in_the_sink_and_acknowledged(
        scripted: ChatService) -> None:
    acknowledged: list[bool] = []

    async def ack() -> None:
        acknowledged.append(True)

    door = FrontDoor(scripted)  # one door for every platform: each brings its own usage text
    sink = RecordingSink()
    assert await door.receive(event("h1", "help", sink, command=Command.HELP,
                                    accepted=ack, help_text="使い方の説明")) == Result.HELP
    assert sink.events == [("finish", "使い方の説明")] and acknowledged == [True]
    status = RecordingSink()
    assert await door.receive(event("s1", "", status, command=Command.STATUS)) == "status"
    assert status.kinds() == ["finish"] and status.final()


def test_command_words_are_the_cores() -> None:
    assert command_word(" リセット ") is Command.RESET
    assert command_word("RESET") is Command.RESET
    assert command_word("ヘルプ") is Command.HELP
    assert command_word("状態") is Command.STATUS
    assert command_word("リセットして") is Command.ASK
    assert command_word("help", (Command.RESET,)) is Command.ASK  # where only reset counts


def test_earlier_messages_are_sorted_into_turns() -> None:
    turns = earlier_turns([
        EarlierMessage("質問です", "1", Writer.PERSON, "U1"),
        EarlierMessage("答えです", "2", Writer.BOT),
        EarlierMessage("他のボット", "3", Writer.OTHER, "B1"),
        EarlierMessage("  ", "4", Writer.PERSON, "U2"),
        EarlierMessage("聞かれた文", "5", Writer.PERSON, "U3"),
        EarlierMessage("スレッドの最初", "6", Writer.PERSON, "U4", source="5"),
    ], skip="5")
    assert [(t[0].speaker, t[0].text, t[1], t[2]) for t in turns] == [
        (Speaker.USER, "質問です", "1", "U1"), (Speaker.SYSTEM, "答えです", "2", None)]


async def test_a_joined_threads_earlier_messages_reach_the_prompt_sorted(
        scripted: ChatService, store: HistoryStore, script) -> None:  # noqa: ANN001
    read: list[bool] = []

    async def earlier() -> list[EarlierMessage]:
        read.append(True)
        return [EarlierMessage("前の質問", "e1", Writer.PERSON, "U2"),
                EarlierMessage("前の答え", "e2", Writer.BOT),
                EarlierMessage("通知ボット", "e3", Writer.OTHER)]

    door = FrontDoor(scripted)
    await door.receive(event("m1", "続きの質問", RecordingSink(), earlier=earlier))
    assert read == [True]
    assert await texts(store) == [(Speaker.USER, "前の質問"), (Speaker.SYSTEM, "前の答え"),
                                  (Speaker.USER, "続きの質問"), (Speaker.SYSTEM, "はい。")]
    await door.receive(event("m2", "次", RecordingSink(), earlier=earlier))
    assert read == [True]  # read only when the bot joins the thread


async def test_asked_about_keeps_the_writer_and_lets_the_asker_stop(
        scripted: ChatService, store: HistoryStore) -> None:
    door = FrontDoor(scripted)
    await door.receive(Event(KEY, "press1", "誰かの文章", RecordingSink(), writer="U1",
                             asker="U2", about="m0"))
    delivery = await store.delivery("test", "press1")
    assert delivery is not None and delivery.author == "U1" and delivery.who_asked == "U2"
    # the message asked about is edited, then deleted: the stored question follows it
    assert await door.edited("test", "m0", "直した文章") == Result.EDITED
    assert (await texts(store))[0] == (Speaker.USER, "直した文章")
    assert await door.deleted("test", "m0") == Result.DELETED
    assert all(text != "直した文章" for _, text in await texts(store))
    assert await door.deleted("test", "unknown") == Result.IGNORED


async def test_an_unaddressed_message_outside_a_followed_conversation_is_ignored(
        scripted: ChatService, store: HistoryStore) -> None:
    door = FrontDoor(scripted)
    sink = RecordingSink()
    assert await door.receive(event("m1", "独り言", sink, addressed=False)) == "ignored"
    assert sink.events == [] and await store.find(KEY) is None


def test_titles_are_short_single_lines() -> None:
    assert FrontDoor.title("長い\n質問 です", 5) == "長い 質…"
    assert FrontDoor.title("   ", 10, "既定") == "既定"


def test_adapters_reach_the_chat_service_only_through_the_front_door() -> None:
    """Discord, Slack and the console hand events to the front door; none of them answers,
    resets, deduplicates or edits the history by calling the chat service itself."""
    from pathlib import Path

    adapters = Path(__file__).resolve().parent.parent / "adapters"
    policy_calls = ("chat.handle(", "chat.reset(", "chat.first_sight(", "chat.follows(",
                    "chat.message_deleted(", "chat.message_edited(",
                    "chat.window", "policy.check(")
    found = [(path.name, call) for path in sorted(adapters.glob("*.py"))
             for call in policy_calls if call in path.read_text(encoding="utf-8")]
    assert found == []


async def test_the_service_hands_every_platform_the_same_front_door(
        scripted: ChatService, settings: Settings) -> None:
    """One front door, built by the service (bot/service/assembly.py), for every platform:
    the policy, the redelivery check and the status are the same wherever an event comes in."""
    from pydantic import SecretStr

    from bot.service.platforms import build_platforms

    both = settings.model_copy(update={
        "discord_token": SecretStr("discord-token"), "slack_bot_token": SecretStr("xoxb-1"),
        "slack_app_token": SecretStr("xapp-1")})
    door = FrontDoor.from_settings(scripted, both)
    discord, slack = build_platforms(door, both)
    assert (discord.name, slack.name) == ("discord", "slack")
    assert discord.bot.front is door  # type: ignore[attr-defined]
    assert slack.handlers.front is door  # type: ignore[attr-defined]
    await discord.close()
