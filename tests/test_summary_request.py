"""Summaries on request (「要約」) through the front door: the real tiny model summarises a
1,000-message thread in bounded chunks and posts it as the answer, exactly once across
redeliveries and restarts, with the access rules and the asker's share like any answer."""

from __future__ import annotations

import pytest

from bot.core.access import AccessPolicy, AccessRequest
from bot.core.chat import ChatConfig, ChatService, Outcome
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.core.front_door import FrontDoor, Result
from bot.core.front_events import Command, EarlierMessage, Event, Writer, command_word
from bot.engine.generator import LocalGenerator
from bot.core.summary import MAX_CALLS, Summariser
from bot.core.summary_request import NOTHING_TO_SUMMARISE, SummaryRequests
from bot.core.history_window import HistoryWindow
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import RecordingSink, ScriptedGenerator
from tests.test_chat import Board, BoardReply, Crash, crashing_at, history
from tests.test_summary import SEEDED, Recording

KEY = ConversationKey("test", "w", "c", "t")


def thread_of(count: int) -> list[EarlierMessage]:
    return [EarlierMessage(f"猫{i}", f"e{i}", Writer.PERSON if i % 2 == 0 else Writer.BOT,
                           "U1" if i % 2 == 0 else None) for i in range(count)]


def reader(messages: list[EarlierMessage], reads: list[int] | None = None):  # noqa: ANN201
    async def read() -> list[EarlierMessage]:
        if reads is not None:
            reads.append(len(messages))
        return messages
    return read


def summary_chat(store: HistoryStore, generator: object, tokenizer: Tokenizer,
                 settings: Settings, **kwargs: object) -> ChatService:
    requests = SummaryRequests(
        Summariser(generator, tokenizer, settings.context_tokens, SEEDED),  # type: ignore[arg-type]
        HistoryWindow(store, tokenizer, settings.prompt_budget))
    return ChatService(store, generator, tokenizer,  # type: ignore[arg-type]
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0),
                       summary_requests=requests, **kwargs)  # type: ignore[arg-type]


def test_the_summary_words() -> None:
    for word in ("要約", "summary", " まとめ "):
        assert command_word(word) is Command.SUMMARY
    assert command_word("要約して") is Command.ASK  # a question that says 要約
    assert command_word("要約して、猫の話を") is Command.ASK


async def test_a_1000_message_thread_is_summarised_once_in_bounded_calls(
        store: HistoryStore, generator: LocalGenerator, tokenizer: Tokenizer,
        settings: Settings) -> None:
    recording = Recording(generator)
    door = FrontDoor(summary_chat(store, recording, tokenizer, settings))
    sink = RecordingSink()
    event = Event(KEY, "s1", "要約", sink, writer="U2", command=Command.SUMMARY,
                  earlier=reader(thread_of(1000)))
    assert await door.receive(event) == str(Outcome.ANSWERED)
    final = sink.final()
    assert isinstance(final, str) and final.startswith("これまでの1000件のメッセージの要約です。\n")
    assert sink.kinds()[0] == "start" and sink.kinds()[-1] == "finish"
    prompts = recording.answers()
    assert 1 < len(prompts) <= MAX_CALLS  # chunked, bounded
    assert recording.summaries() == []  # a person waits for it: not background work
    assert all(len(tokenizer.encode(p)) + SEEDED.max_new_tokens <= settings.context_tokens
               for p in prompts)
    stored = await history(store, KEY)
    assert stored[-2:] == [(Speaker.USER, "要約"), (Speaker.SYSTEM, final)]  # like an answer
    assert 0 < len(stored) - 2 < 1000  # the thread joined as a first question joins it
    assert stored[-3] == (Speaker.SYSTEM, "猫999")
    again = RecordingSink()
    assert await door.receive(Event(KEY, "s1", "要約", again, writer="U2",
                                    command=Command.SUMMARY,
                                    earlier=reader(thread_of(1000)))) == Result.DUPLICATE
    assert len(recording.answers()) == len(prompts) and again.events == []


async def test_without_the_platforms_messages_the_stored_history_is_summarised(
        store: HistoryStore, generator: LocalGenerator, tokenizer: Tokenizer,
        settings: Settings) -> None:
    recording = Recording(generator)
    door = FrontDoor(summary_chat(store, recording, tokenizer, settings))
    sink = RecordingSink()
    await door.receive(Event(KEY, "s0", "要約", sink, writer="U2", command=Command.SUMMARY))
    assert sink.final() == NOTHING_TO_SUMMARISE and recording.prompts == []
    await door.receive(Event(KEY, "q1", "猫は何を食べますか", RecordingSink(), writer="U2"))
    sink = RecordingSink()
    await door.receive(Event(KEY, "s2", "まとめ", sink, writer="U2", command=Command.SUMMARY))
    assert str(sink.final()).startswith("これまでの4件のメッセージの要約です。")
    assert "猫は何を食べますか" in recording.answers()[-1]


async def test_a_refused_person_gets_no_summary_and_nothing_is_stored(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings) -> None:
    generator = ScriptedGenerator(default="要約です。")
    door = FrontDoor(summary_chat(store, generator, tokenizer, settings),
                     AccessPolicy(blocked=frozenset({"U2"})))
    sink = RecordingSink()
    event = Event(KEY, "s1", "要約", sink, writer="U2", command=Command.SUMMARY,
                  earlier=reader(thread_of(10)),
                  access=(AccessRequest(user="U2", workspace="w", channel="c"),))
    assert await door.receive(event) == Result.DENIED
    assert sink.events == [] and generator.prompts == [] and await store.find(KEY) is None


async def test_the_summary_counts_against_the_askers_share(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings) -> None:
    generator = ScriptedGenerator(default="要約です。")
    door = FrontDoor(summary_chat(store, generator, tokenizer, settings))
    await door.receive(Event(KEY, "s1", "要約", RecordingSink(), writer="U2",
                             command=Command.SUMMARY, earlier=reader(thread_of(10))))
    assert generator.owners == ["test:U2"]


@pytest.mark.parametrize("point", ["placeholder", "user_turn", "answer_stored", "shown"])
async def test_a_crash_then_redelivery_posts_one_summary(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings, point: str) -> None:
    board = Board()
    first = summary_chat(store, ScriptedGenerator(default="一度目の要約"), tokenizer, settings,
                         crash_hook=crashing_at(point))
    reads: list[int] = []
    with pytest.raises(Crash):
        await FrontDoor(first).receive(Event(
            KEY, "s1", "要約", BoardReply(board, "s1"), writer="U2", command=Command.SUMMARY,
            earlier=reader(thread_of(10), reads)))
    generator = ScriptedGenerator(default="二度目の要約")
    second = FrontDoor(summary_chat(store, generator, tokenizer, settings))
    event = Event(KEY, "s1", "要約", BoardReply(board, "s1"), writer="U2",
                  command=Command.SUMMARY, earlier=reader(thread_of(10), reads))
    assert await second.receive(event) == str(Outcome.ANSWERED)
    report = await second.chat.recover("test", lambda d: BoardReply(board, d.delivery_key))
    assert report.answered == 0
    assert await second.receive(event) == Result.DUPLICATE
    written = "一度目の要約" if point in ("answer_stored", "shown") else "二度目の要約"
    assert board.visible() == [f"これまでの10件のメッセージの要約です。\n{written}"]
    assert len(generator.prompts) == (0 if written == "一度目の要約" else 1)
    stored = await history(store, KEY)
    assert [speaker for speaker, _ in stored].count(Speaker.USER) == 6  # 5 read in, 要約
    assert stored[-2:] == [(Speaker.USER, "要約"), (Speaker.SYSTEM, board.visible()[0])]


async def test_a_crash_then_restart_finishes_it_as_a_summary(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings) -> None:
    board = Board()
    first = summary_chat(store, ScriptedGenerator(default="要約"), tokenizer, settings,
                         crash_hook=crashing_at("placeholder"))
    with pytest.raises(Crash):
        await FrontDoor(first).receive(Event(
            KEY, "s1", "要約", BoardReply(board, "s1"), writer="U2", command=Command.SUMMARY,
            earlier=reader(thread_of(10))))
    generator = ScriptedGenerator(default="答えです")
    second = summary_chat(store, generator, tokenizer, settings)
    report = await second.recover("test", lambda d: BoardReply(board, d.delivery_key))
    assert report.answered == 1
    # no platform reader after a restart: the stored history (nothing yet) is what it reads,
    # and the request is never answered as the question 「要約」
    assert board.visible() == [NOTHING_TO_SUMMARISE] and generator.prompts == []


async def test_moichido_on_a_summary_writes_a_summary_again(
        store: HistoryStore, tokenizer: Tokenizer, settings: Settings) -> None:
    from tests.test_controls import ButtonSink

    generator = ScriptedGenerator(["最初の要約"], default="次の要約")
    chat = summary_chat(store, generator, tokenizer, settings)
    sink = ButtonSink()
    await FrontDoor(chat).receive(Event(KEY, "s1", "要約", sink, writer="U2",
                                        command=Command.SUMMARY, earlier=reader(thread_of(10))))
    again = ButtonSink()
    assert await chat.regenerate("test", sink.ref, "r1", "U2", again) == "done"
    assert again.final() == "これまでの10件のメッセージの要約です。\n次の要約"
    assert sink.ref in again.retired  # the first summary lost 「もう一度」, as an answer does
    assert generator.prompts[-1].startswith("ユーザー: 次の会話を日本語で短く要約してください。")
