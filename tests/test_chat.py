"""The chat service: order, dedupe, history, streaming into a sink, and every failure path."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.conversation import ConversationKey, IncomingMessage, Speaker, Turn
from bot.core.chat import (
    EMPTY_ANSWER,
    INTERRUPTED_NOTICE,
    SHORTENED_NOTICE,
    STALE_NOTICE,
    USAGE_MESSAGE,
    ChatConfig,
    ChatService,
    Outcome,
)
from bot.core.reply import MessageReply
from bot.engine.tokenizer import Tokenizer
from bot.errors import GenerationTimeout, QueueFullError
from storage.history import HistoryStore
from tests.fakes import RecordingSink, ScriptedGenerator

KEY = ConversationKey("test", "w", "c", "t")


def service(store: HistoryStore, tokenizer: Tokenizer, generator: ScriptedGenerator,
            budget: int = 1920) -> ChatService:
    return ChatService(store, generator, tokenizer, ChatConfig(prompt_budget=budget,
                                                               stream_interval_s=0.0))


async def history(store: HistoryStore, key: ConversationKey = KEY) -> list[tuple[Speaker, str]]:
    conversation = await store.find(key)
    assert conversation is not None
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 100))]


async def test_answers_with_the_real_model_and_stores_both_turns(
        chat: ChatService, store: HistoryStore) -> None:
    sink = RecordingSink()
    outcome = await chat.handle(KEY, IncomingMessage("猫は好きですか?", "m1"), sink)
    assert outcome is Outcome.ANSWERED
    assert sink.kinds()[0] == "start" and sink.kinds()[-1] == "finish"
    updates = [text for kind, text in sink.events if kind == "update"]
    assert updates and all(isinstance(u, str) for u in updates)
    final = sink.final()
    assert isinstance(final, str) and final
    stored = await history(store)
    assert stored == [(Speaker.USER, "猫は好きですか?"), (Speaker.SYSTEM, final)]


async def test_the_prompt_carries_the_thread_history(store: HistoryStore,
                                                     tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    await chat.handle(KEY, IncomingMessage("一つ目", "m1"), RecordingSink())
    await chat.handle(KEY, IncomingMessage("二つ目\n改行あり", "m2"), RecordingSink())
    assert generator.prompts[-1] == (
        "ユーザー: 一つ目<NL>システム: 答え<NL>ユーザー: 二つ目<NL>改行あり<NL>システム: ")


async def test_a_redelivered_message_is_answered_once(store: HistoryStore,
                                                      tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator()
    chat = service(store, tokenizer, generator)
    sinks = [RecordingSink() for _ in range(3)]
    outcomes = await asyncio.gather(
        *[chat.handle(KEY, IncomingMessage("同じ", "same"), s) for s in sinks])
    assert sorted(outcomes) == sorted([Outcome.ANSWERED, Outcome.DUPLICATE, Outcome.DUPLICATE])
    assert sum(1 for s in sinks if s.events) == 1  # the duplicates showed nothing at all
    assert len(generator.prompts) == 1


@pytest.mark.parametrize("text", ["", "   ", "\n\x00\n"])
async def test_an_empty_message_gets_the_usage_hint_without_generating(
        store: HistoryStore, tokenizer: Tokenizer, text: str) -> None:
    generator = ScriptedGenerator()
    sink = RecordingSink()
    outcome = await service(store, tokenizer, generator).handle(KEY, IncomingMessage(text, "e"), sink)
    assert outcome is Outcome.EMPTY and sink.events == [("finish", USAGE_MESSAGE)]
    assert generator.prompts == [] and await history(store) == []
    again = RecordingSink()  # a redelivery of the same empty message: no second hint
    chat = service(store, tokenizer, generator)
    assert await chat.handle(KEY, IncomingMessage(text, "e"), again) is Outcome.DUPLICATE
    assert again.events == []


async def test_turns_of_one_conversation_run_in_arrival_order(store: HistoryStore,
                                                             tokenizer: Tokenizer) -> None:
    gate = asyncio.Event()
    generator = ScriptedGenerator(default="答え", gate=gate)
    chat = service(store, tokenizer, generator)
    tasks = [asyncio.create_task(chat.handle(KEY, IncomingMessage(f"質問{i}", f"m{i}"),
                                             RecordingSink())) for i in range(4)]
    while not generator.prompts:
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert await history(store) == [
        turn for i in range(4) for turn in ((Speaker.USER, f"質問{i}"), (Speaker.SYSTEM, "答え"))]


@pytest.mark.parametrize("error", [QueueFullError("full"), GenerationTimeout("slow")])
async def test_generator_errors_reach_the_user_in_japanese_and_store_no_half_answer(
        store: HistoryStore, tokenizer: Tokenizer, error: Exception,
        caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    chat = service(store, tokenizer, ScriptedGenerator(["途中まで"], error=error))
    outcome = await chat.handle(KEY, IncomingMessage("質問", "m1"), sink)
    assert outcome is Outcome.FAILED
    assert sink.events[-1] == ("fail", error.user_message)
    assert await history(store) == [(Speaker.USER, "質問")]  # the question kept, no half answer
    if isinstance(error, QueueFullError):  # busy is no bug: one warning line, no traceback
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and warnings[0].exc_info is None
        assert "busy" in warnings[0].getMessage()
    else:
        assert any(r.exc_info for r in caplog.records)  # the log has the traceback


async def test_an_unexpected_error_is_logged_and_the_user_gets_a_plain_message(
        store: HistoryStore, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    chat = service(store, tokenizer, ScriptedGenerator(error=RuntimeError("secret internals")))
    with caplog.at_level(logging.ERROR):
        assert await chat.handle(KEY, IncomingMessage("質問", "m1"), sink) is Outcome.FAILED
    kind, message = sink.events[-1]
    assert kind == "fail" and "secret internals" not in str(message)
    assert any("secret internals" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert await history(store) == [(Speaker.USER, "質問")]


async def test_a_huge_message_is_shortened_and_the_user_told(store: HistoryStore,
                                                             tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    sink = RecordingSink()
    huge = "長い文章です。" * 150_000  # about 1 MB
    await service(store, tokenizer, generator, budget=400).handle(
        KEY, IncomingMessage(huge, "big"), sink)
    assert sink.final() == f"答え\n\n{SHORTENED_NOTICE}"
    assert len(tokenizer.encode(generator.prompts[0])) <= 400
    assert (await history(store))[0] == (Speaker.USER, huge)  # stored whole: nothing lost


async def test_an_empty_answer_is_not_stored(store: HistoryStore, tokenizer: Tokenizer) -> None:
    sink = RecordingSink()
    await service(store, tokenizer, ScriptedGenerator([" "])).handle(
        KEY, IncomingMessage("質問", "m1"), sink)
    assert sink.final() == EMPTY_ANSWER
    assert await history(store) == [(Speaker.USER, "質問")]


async def test_reset_starts_afresh(store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    await chat.handle(KEY, IncomingMessage("前の話", "m1"), RecordingSink())
    assert await chat.reset(KEY, "reset-1") is True
    assert await chat.reset(KEY, "reset-1") is False  # the same request redelivered
    await chat.handle(KEY, IncomingMessage("新しい話", "m2"), RecordingSink())
    assert generator.prompts[-1] == "ユーザー: 新しい話<NL>システム: "


async def test_message_text_stays_out_of_info_logs(store: HistoryStore, tokenizer: Tokenizer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    chat = service(store, tokenizer, ScriptedGenerator(["ひみつの答え"]))
    with caplog.at_level(logging.INFO):
        await chat.handle(KEY, IncomingMessage("ひみつの質問", "m1"), RecordingSink())
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "answered" in text and "ひみつ" not in text


async def import_history(chat: ChatService, key: ConversationKey,
                         turns: list[tuple[Turn, str]]) -> int:
    """A thread's earlier messages stored as the chat service stores them when it joins a
    thread (its window's backfill, then the store's import; nothing else runs here to lock
    against)."""
    return await chat.store.import_turns(key, chat.window.backfill(turns))


async def test_imported_history_is_cleaned_like_messages(store: HistoryStore,
                                                         tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    stored = await import_history(chat, KEY, [
        (Turn(Speaker.USER, "壊れた\ud800文字\x00"), "a"),
        (Turn(Speaker.SYSTEM, "  \n "), "b"),
        (Turn(Speaker.SYSTEM, "考え中…"), "c"),  # the bot's notices are not answers
        (Turn(Speaker.SYSTEM, QueueFullError.user_message), "d"),
        (Turn(Speaker.SYSTEM, "順番待ち: 2番目"), "e"),
    ])
    assert stored == 1
    await chat.handle(KEY, IncomingMessage("続き\udfff", "f"), RecordingSink())
    assert generator.prompts[-1] == "ユーザー: 壊れた文字<NL>ユーザー: 続き<NL>システム: "


async def test_a_message_read_in_with_its_thread_is_still_answered_once(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    """Two mentions close together in a thread the bot is joining: the second one's history
    read picks up the first before the first's own event is handled. The first is still
    answered, once, and its text is in the history once."""
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    await import_history(chat, KEY, [(Turn(Speaker.USER, "前の話"), "x"),
                                    (Turn(Speaker.USER, "一つ目の質問"), "a")])
    assert await chat.handle(KEY, IncomingMessage("一つ目の質問", "a"), RecordingSink()) \
        is Outcome.ANSWERED
    assert generator.prompts[-1] == (
        "ユーザー: 前の話<NL>ユーザー: 一つ目の質問<NL>システム: ")
    assert await chat.handle(KEY, IncomingMessage("一つ目の質問", "a"), RecordingSink()) \
        is Outcome.DUPLICATE
    assert await history(store) == [(Speaker.USER, "前の話"), (Speaker.USER, "一つ目の質問"),
                                    (Speaker.SYSTEM, "答え")]


async def test_reset_where_the_bot_is_not_part_of_the_conversation_does_not_join_it(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    chat = service(store, tokenizer, ScriptedGenerator())
    assert await chat.reset(KEY) is True
    assert not await chat.follows(KEY)


async def test_a_slow_placeholder_does_not_reorder_the_turns(store: HistoryStore,
                                                            tokenizer: Tokenizer) -> None:
    """The first message's placeholder takes longer to post than the second's: the turns
    still go in arrival order."""
    release = asyncio.Event()

    class SlowStart(RecordingSink):
        async def start(self) -> None:
            await release.wait()
            await super().start()

    chat = service(store, tokenizer, ScriptedGenerator(default="答え"))
    first = asyncio.create_task(chat.handle(KEY, IncomingMessage("最初", "a"), SlowStart()))
    second_sink = RecordingSink()
    second = asyncio.create_task(chat.handle(KEY, IncomingMessage("二番目", "b"), second_sink))
    while not second_sink.events:  # the second placeholder is out; its turn must wait
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, second)
    assert [text for _, text in await history(store)] == ["最初", "答え", "二番目", "答え"]


# ----- exactly once through crashes, restarts and shutdowns ----------------------------------
class Board:
    """A platform's message list: what people would see in the thread."""

    def __init__(self) -> None:
        self.messages: dict[int, dict[str, object]] = {}

    def visible(self) -> list[str]:
        return [str(m["text"]) for m in self.messages.values()]


class BoardReply(MessageReply):
    """The real MessageReply mechanics over a Board: tagged posts, edits, lookups by tag."""

    def __init__(self, board: Board, tag: str | None) -> None:
        super().__init__(tag)
        self.board = board

    async def post(self, text: str, *, part: int = 0) -> int:
        handle = len(self.board.messages) + 1
        self.board.messages[handle] = {"text": text, "tag": (self.tag, part)}
        return handle

    async def edit(self, handle: object, text: str, *, final: bool) -> None:
        self.board.messages[int(handle)]["text"] = text  # type: ignore[call-overload]

    async def find(self, part: int) -> int | None:
        return next((h for h, m in self.board.messages.items()
                     if m["tag"] == (self.tag, part)), None)

    def ref(self, handle: object) -> str | None:
        return str(handle)

    def restore(self, ref: str) -> int:
        return int(ref)


class Crash(BaseException):
    """The process dying at a point (nothing after it runs)."""


CRASH_POINTS = ["accepted", "acknowledged", "placeholder", "reply_ref", "user_turn",
                "streaming", "answer_stored", "shown", "answered"]


def crashing_at(point: str):  # type: ignore[no-untyped-def]
    def hook(name: str) -> None:
        if name == point:
            raise Crash(point)
    return hook


@pytest.mark.parametrize("redelivered", [False, True], ids=["recovery", "redelivery"])
@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_crash_at_any_point_ends_with_one_answer_and_one_user_turn(
        store: HistoryStore, tokenizer: Tokenizer, point: str, redelivered: bool) -> None:
    board = Board()
    first = ChatService(store, ScriptedGenerator(default="答えです。"), tokenizer,
                        ChatConfig(stream_interval_s=0.0), crash_hook=crashing_at(point))
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    message = IncomingMessage("質問です", "m1")
    with pytest.raises(Crash):
        await first.handle(KEY, message, BoardReply(board, "m1"), accepted=ack)
    assert acked or point == "accepted"  # acknowledged only once recorded

    # the restart: a new service over the same database
    generator = ScriptedGenerator(default="答えです。")
    second = service(store, tokenizer, generator)
    if redelivered:
        outcome = await second.handle(KEY, message, BoardReply(board, "m1"))
        assert outcome is (Outcome.DUPLICATE if point == "answered" else Outcome.ANSWERED)
    report = await second.recover("test", lambda d: BoardReply(board, d.delivery_key))
    assert report.answered == (0 if redelivered or point == "answered" else 1)
    assert await second.handle(KEY, message, BoardReply(board, "m1")) is Outcome.DUPLICATE

    assert board.visible() == ["答えです。"]  # one message: the placeholder, edited
    assert await history(store) == [(Speaker.USER, "質問です"), (Speaker.SYSTEM, "答えです。")]
    regenerated = point not in ("answer_stored", "shown", "answered")
    assert len(generator.prompts) == (1 if regenerated else 0)
    assert await store.unfinished("test") == []


async def test_recovery_of_an_old_message_ends_it_with_a_notice(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    board = Board()
    first = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0),
                        crash_hook=crashing_at("reply_ref"))
    with pytest.raises(Crash):
        await first.handle(KEY, IncomingMessage("古い質問", "old"), BoardReply(board, "old"))
    generator = ScriptedGenerator()
    report = await service(store, tokenizer, generator).recover(
        "test", lambda d: BoardReply(board, d.delivery_key), max_age_s=0.0)
    assert (report.answered, report.stale) == (0, 1)
    assert board.visible() == [STALE_NOTICE] and generator.prompts == []
    assert await store.unfinished("test") == []


async def test_two_unanswered_turns_of_one_thread_are_recovered_in_order(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    board = Board()
    gate = asyncio.Event()  # never set: the first process dies with both turns in flight
    first = service(store, tokenizer, ScriptedGenerator(gate=gate))
    tasks = [asyncio.create_task(first.handle(KEY, IncomingMessage(f"質問{i}", f"m{i}"),
                                              BoardReply(board, f"m{i}"))) for i in range(2)]
    while len(board.messages) < 2:
        await asyncio.sleep(0)
    for task in tasks:  # the process dies
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    generator = ScriptedGenerator(["一つ目の答え", "二つ目の答え"])
    report = await service(store, tokenizer, generator).recover(
        "test", lambda d: BoardReply(board, d.delivery_key))
    assert report.answered == 2
    assert board.visible() == ["一つ目の答え", "二つ目の答え"]
    # the second turn was still waiting for the first: it follows the first answer
    assert generator.prompts == ["ユーザー: 質問0<NL>システム: ",
                                 "ユーザー: 質問0<NL>システム: 一つ目の答え<NL>ユーザー: 質問1<NL>システム: "]
    assert [text for _, text in await history(store)] == [
        "質問0", "一つ目の答え", "質問1", "二つ目の答え"]


async def test_shutdown_lets_answers_finish_within_the_grace(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    gate = asyncio.Event()
    chat = service(store, tokenizer, ScriptedGenerator(default="答え", gate=gate))
    board = Board()
    task = asyncio.create_task(chat.handle(KEY, IncomingMessage("質問", "m1"),
                                           BoardReply(board, "m1")))
    while not board.messages:
        await asyncio.sleep(0)
    stopping = asyncio.create_task(chat.shutdown(grace_s=30))
    while not chat.closing:
        await asyncio.sleep(0)
    late_sink = RecordingSink()  # arrives while stopping: recorded, answered after restart
    assert await chat.handle(KEY, IncomingMessage("遅れた質問", "m2"), late_sink) \
        is Outcome.DEFERRED
    assert late_sink.events == []
    gate.set()
    await stopping
    assert await task is Outcome.ANSWERED and board.visible() == ["答え"]
    assert [d.delivery_key for d in await store.unfinished("test")] == ["m2"]


async def test_shutdown_past_the_grace_tells_the_user_and_the_restart_answers(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    gate = asyncio.Event()  # the answer never comes in time
    chat = service(store, tokenizer, ScriptedGenerator(gate=gate))
    board = Board()
    task = asyncio.create_task(chat.handle(KEY, IncomingMessage("質問", "m1"),
                                           BoardReply(board, "m1")))
    while not board.messages:
        await asyncio.sleep(0)
    await chat.shutdown(grace_s=0.0)
    assert await task is Outcome.INTERRUPTED
    assert board.visible() == [INTERRUPTED_NOTICE]
    report = await service(store, tokenizer, ScriptedGenerator(default="再開後の答え")).recover(
        "test", lambda d: BoardReply(board, d.delivery_key))
    assert report.answered == 1 and board.visible() == ["再開後の答え"]
    assert await history(store) == [(Speaker.USER, "質問"), (Speaker.SYSTEM, "再開後の答え")]


async def test_the_service_decides_the_thread_import_and_unaddressed_messages(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    loads: list[int] = []

    async def earlier() -> list[tuple[Turn, str | None]]:
        loads.append(1)
        return [(Turn(Speaker.USER, "前からの話"), "x")]

    unaddressed = IncomingMessage("独り言", "u1")
    assert await chat.handle(KEY, unaddressed, RecordingSink(), addressed=False,
                             earlier=earlier) is Outcome.IGNORED
    assert loads == [] and not await chat.follows(KEY)
    await chat.handle(KEY, IncomingMessage("質問", "m1"), RecordingSink(), earlier=earlier)
    await chat.handle(KEY, IncomingMessage("続き", "m2"), RecordingSink(), addressed=False,
                      earlier=earlier)
    assert loads == [1]  # read once, when the bot joined
    assert generator.prompts[-1] == (
        "ユーザー: 前からの話<NL>ユーザー: 質問<NL>システム: 答え<NL>ユーザー: 続き<NL>システム: ")


class ShownReply(BoardReply):
    """A BoardReply that also records every text it puts on the board, in order."""

    def __init__(self, board: Board, tag: str | None, shown: list[str]) -> None:
        super().__init__(board, tag)
        self.shown = shown

    async def post(self, text: str, *, part: int = 0) -> int:
        self.shown.append(text)
        return await super().post(text, part=part)

    async def edit(self, handle: object, text: str, *, final: bool) -> None:
        self.shown.append(text)
        await super().edit(handle, text, final=final)


@pytest.mark.parametrize("redelivered", [False, True], ids=["recovery", "redelivery"])
@pytest.mark.parametrize("point", ["accepted", "acknowledged"])
async def test_an_empty_message_recovered_after_a_crash_gets_the_usage_hint(
        store: HistoryStore, tokenizer: Tokenizer, point: str, redelivered: bool) -> None:
    board = Board()
    first = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0),
                        crash_hook=crashing_at(point))
    message = IncomingMessage("  ", "m1")  # only a mention, say: nothing left once cleaned
    with pytest.raises(Crash):
        await first.handle(KEY, message, BoardReply(board, "m1"))
    generator = ScriptedGenerator()
    second = service(store, tokenizer, generator)
    if redelivered:
        assert await second.handle(KEY, message, BoardReply(board, "m1")) is Outcome.EMPTY
    await second.recover("test", lambda d: BoardReply(board, d.delivery_key))
    assert board.visible() == [USAGE_MESSAGE]
    assert generator.prompts == []
    assert await history(store) == []  # no empty user turn stored
    assert await store.unfinished("test") == []


@pytest.mark.parametrize("point", ["answer_stored", "shown"])
async def test_a_resumed_reply_with_its_answer_stored_goes_straight_to_the_answer(
        store: HistoryStore, tokenizer: Tokenizer, point: str) -> None:
    board = Board()
    first = ChatService(store, ScriptedGenerator(default="答えです。"), tokenizer,
                        ChatConfig(stream_interval_s=0), crash_hook=crashing_at(point))
    with pytest.raises(Crash):
        await first.handle(KEY, IncomingMessage("質問", "m1"), BoardReply(board, "m1"))
    shown: list[str] = []
    report = await service(store, tokenizer, ScriptedGenerator()).recover(
        "test", lambda d: ShownReply(board, d.delivery_key, shown))
    assert report.answered == 1
    assert shown == ["答えです。"]  # no 「考え中…」 in between
    assert board.visible() == ["答えです。"]


RESET_NOTICE = "会話をリセットしました。"
RESET_POINTS = ["accepted", "shown", "answered"]


@pytest.mark.parametrize("redelivered", [False, True], ids=["recovery", "redelivery"])
@pytest.mark.parametrize("point", RESET_POINTS)
async def test_a_reset_through_a_crash_is_made_once_and_confirmed_once(
        store: HistoryStore, tokenizer: Tokenizer, point: str, redelivered: bool) -> None:
    board = Board()
    chat = service(store, tokenizer, ScriptedGenerator(default="前の答え"))
    await chat.handle(KEY, IncomingMessage("前の質問", "m0"), BoardReply(board, "m0"))
    first = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0),
                        crash_hook=crashing_at(point))
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    with pytest.raises(Crash):
        await first.reset(KEY, "r1", sink=BoardReply(board, "r1"), notice=RESET_NOTICE,
                          accepted=ack)
    assert acked  # acknowledged once recorded
    # after the restart, a new turn before the reset's recovery: it must stay in the history
    second = service(store, tokenizer, ScriptedGenerator(default="新しい答え"))
    await second.handle(KEY, IncomingMessage("新しい質問", "m1"), BoardReply(board, "m1"))
    if redelivered:
        assert await second.reset(KEY, "r1", sink=BoardReply(board, "r1"),
                                  notice=RESET_NOTICE) is (point != "answered")
    await second.recover("test", lambda d: BoardReply(board, d.delivery_key))
    assert await second.reset(KEY, "r1", sink=BoardReply(board, "r1"),
                              notice=RESET_NOTICE) is False
    # one confirmation (shown late, after the new answer, when it was lost in the crash)
    assert sorted(board.visible()) == sorted(["前の答え", RESET_NOTICE, "新しい答え"])
    assert await history(store) == [(Speaker.USER, "新しい質問"), (Speaker.SYSTEM, "新しい答え")]
    assert await store.unfinished("test") == []


async def test_a_reset_with_its_sink_shows_the_notice_and_a_redelivery_does_nothing(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    board = Board()
    chat = service(store, tokenizer, ScriptedGenerator(default="答え"))
    await chat.handle(KEY, IncomingMessage("質問", "m0"), BoardReply(board, "m0"))
    assert await chat.reset(KEY, "r1", sink=BoardReply(board, "r1"), notice=RESET_NOTICE)
    assert not await chat.reset(KEY, "r1", sink=BoardReply(board, "r1"), notice=RESET_NOTICE)
    assert board.visible() == ["答え", RESET_NOTICE]
    conversation = await store.find(KEY)
    assert conversation is not None and await store.recent_turns(conversation, 10) == []


async def test_an_old_message_whose_answer_was_stored_gets_that_answer_not_the_notice(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    board = Board()
    first = ChatService(store, ScriptedGenerator(default="答えです。"), tokenizer,
                        ChatConfig(stream_interval_s=0), crash_hook=crashing_at("answer_stored"))
    with pytest.raises(Crash):
        await first.handle(KEY, IncomingMessage("古い質問", "old"), BoardReply(board, "old"))
    report = await service(store, tokenizer, ScriptedGenerator()).recover(
        "test", lambda d: BoardReply(board, d.delivery_key), max_age_s=0.0)
    assert report.stale == 1 and board.visible() == ["答えです。"]
    assert await store.unfinished("test") == []


async def test_the_cheap_duplicate_check_is_the_cores_and_counted(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    counted: list[tuple[str, Outcome]] = []
    chat = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(),
                       on_outcome=lambda platform, outcome: counted.append((platform, outcome)))
    assert chat.first_sight("slack", "C1:1.0")
    assert chat.first_sight("discord", "C1:1.0")  # each platform its own keys
    assert not chat.first_sight("slack", "C1:1.0")  # a retry: dropped before any parsing
    assert counted == [("slack", Outcome.DUPLICATE)]
