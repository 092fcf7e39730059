"""The buttons on an answer, in the core: stop, regenerate, feedback, and which controls a
reply offers when. Real SQLite files; the generator is scripted except where the engine's batch
row must be seen to leave (the real tiny GPT-NeoX)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from itertools import count
from pathlib import Path

import pytest

from bot.core.chat import EMPTY_ANSWER, ChatConfig, ChatService, Outcome
from bot.core.controls import STOPPED_MARK, Action, ControlResult, control_message
from bot.conversation import (ANSWERED, NO_CONTROLS, STREAMING, ConversationKey, Controls,
                              IncomingMessage, Speaker)
from bot.errors import OutdatedRequest, QueueFullError
from bot.engine.generation import GenerationParams
from bot.engine.generator import LocalGenerator, WaitCallback
from bot.engine.tokenizer import Tokenizer
from bot.ports.records import Delivery
from storage.history import HistoryStore
from storage.schema import MIGRATIONS
from tests.fakes import RecordingSink, ScriptedGenerator

KEY = ConversationKey("test", "w", "c", "t")
# Tokens a stopped row may still get: the step running when the button was pressed, and the
# one the worker may have begun before it saw the abort.
STEP_SLACK = 2
_refs = count(1)


class ButtonSink(RecordingSink):
    """A sink with a main message (its ref is stored) and buttons: records what it offers
    (with the call it preceded) and which earlier answers it retires."""

    def __init__(self) -> None:
        super().__init__()
        self.ref = f"msg-{next(_refs)}"
        self.offered: list[Controls] = []
        self.retired: list[str] = []
        self.updated = asyncio.Event()

    def placeholder_ref(self) -> str:
        return self.ref

    def offer(self, controls: Controls) -> None:
        self.offered.append(controls)
        self.events.append(("offer", controls))

    async def retire(self, ref: str) -> None:
        self.retired.append(ref)

    async def update(self, text: str) -> None:
        await super().update(text)
        self.updated.set()


class HeldGenerator(ScriptedGenerator):
    """Streams `first`, then holds until released (or cancelled: `aborted` is set, as the
    local generator aborts a cancelled request)."""

    def __init__(self, first: str = "途中まで書いた", rest: str = "の続き") -> None:
        super().__init__()
        self.first, self.rest = first, rest
        self.release = asyncio.Event()
        self.aborted = asyncio.Event()

    async def stream(self, prompt: str, params: GenerationParams | None = None, *,
                     owner: str | None = None,
                     on_wait: WaitCallback | None = None) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        self.owners.append(owner)
        try:
            yield self.first
            await self.release.wait()
            yield self.rest
        except asyncio.CancelledError:
            self.aborted.set()
            raise


def service(store: HistoryStore, tokenizer: Tokenizer, generator: object,
            **hooks: Callable[..., None]) -> ChatService:
    return ChatService(store, generator, tokenizer,  # type: ignore[arg-type]
                       ChatConfig(prompt_budget=1920, stream_interval_s=0.0), **hooks)


def ask(text: str, key: str, author: str = "alice") -> IncomingMessage:
    return IncomingMessage(text, key, author)


async def history(store: HistoryStore) -> list[tuple[Speaker, str]]:
    conversation = await store.find(KEY)
    assert conversation is not None
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 100))]


# ----- stop ------------------------------------------------------------------------------
async def test_stop_aborts_the_generation_and_keeps_the_partial_answer(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = HeldGenerator()
    chat = service(store, tokenizer, generator)
    sink = ButtonSink()
    answering = asyncio.create_task(chat.handle(KEY, ask("長い話をして", "m1"), sink))
    await sink.updated.wait()
    assert await chat.stop("test", sink.ref, "alice") is ControlResult.DONE
    assert await answering is Outcome.ANSWERED
    assert generator.aborted.is_set() and not generator.release.is_set()
    assert sink.final() == f"途中まで書いた\n\n{STOPPED_MARK}"
    assert await history(store) == [(Speaker.USER, "長い話をして"),
                                     (Speaker.SYSTEM, "途中まで書いた")]
    # The finished answer offers its buttons; stopping it again finds nothing running.
    assert sink.offered == [STREAMING, ANSWERED]
    assert await chat.stop("test", sink.ref, "alice") is ControlResult.NOT_RUNNING


async def test_only_the_asker_or_a_moderator_may_stop(store: HistoryStore,
                                                      tokenizer: Tokenizer) -> None:
    generator = HeldGenerator()
    chat = service(store, tokenizer, generator)
    sink = ButtonSink()
    answering = asyncio.create_task(chat.handle(KEY, ask("質問", "m1"), sink))
    await sink.updated.wait()
    assert await chat.stop("test", sink.ref, "mallory") is ControlResult.NOT_ALLOWED
    assert not generator.aborted.is_set()
    assert await chat.stop("test", "no-such-message", "alice") is ControlResult.NOT_FOUND
    assert await chat.stop("test", sink.ref, "mod", moderator=True) is ControlResult.DONE
    await answering
    assert generator.aborted.is_set() and sink.final().endswith(STOPPED_MARK)  # type: ignore[union-attr]
    assert control_message(Action.STOP, ControlResult.NOT_ALLOWED) == \
        "この回答を止められるのは質問した人だけです。"


async def test_stopping_an_answer_still_waiting_for_its_turn_skips_the_generation(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = HeldGenerator()
    chat = service(store, tokenizer, generator)
    first, second = ButtonSink(), ButtonSink()
    one = asyncio.create_task(chat.handle(KEY, ask("一つ目", "m1"), first))
    await first.updated.wait()
    two = asyncio.create_task(chat.handle(KEY, ask("二つ目", "m2"), second))
    await wait_until(lambda: ("start", None) in second.events)
    assert await chat.stop("test", second.ref, "alice") is ControlResult.DONE
    generator.release.set()
    assert await one is Outcome.ANSWERED and await two is Outcome.ANSWERED
    assert len(generator.prompts) == 1  # the stopped one never reached the generator
    assert second.final() == STOPPED_MARK
    assert [text for _, text in await history(store)] == ["一つ目", "途中まで書いたの続き", "二つ目"]


async def test_stop_frees_the_engine_row_within_a_step(
        store: HistoryStore, tokenizer: Tokenizer, generator: LocalGenerator) -> None:
    chat = ChatService(store, generator, tokenizer, ChatConfig(
        prompt_budget=1920, stream_interval_s=0.0,
        params=GenerationParams(max_new_tokens=1900, do_sample=False)))
    sink = ButtonSink()
    answering = asyncio.create_task(chat.handle(KEY, ask("猫は何ですか?", "m1"), sink))
    await sink.updated.wait()
    assert generator.stats().running == 1
    assert await chat.stop("test", sink.ref, "alice") is ControlResult.DONE
    stopped = generator.stats().generated_tokens  # the answer was found, its generation cancelled
    await wait_until(lambda: generator.stats().running == 0)
    # The row left the batch at the worker's next step: one row decodes one token a step.
    assert generator.stats().generated_tokens - stopped <= STEP_SLACK
    await answering
    final = sink.final()
    assert isinstance(final, str) and final.endswith(STOPPED_MARK)
    stored = await history(store)
    assert stored[-1] == (Speaker.SYSTEM, final.removesuffix(STOPPED_MARK).strip())
    assert await collect_text(generator)  # still serving


async def collect_text(generator: LocalGenerator) -> str:
    return "".join([delta async for delta in generator.stream(
        "ユーザー: 猫<NL>システム: ", GenerationParams(max_new_tokens=4, do_sample=False))])


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout)


# ----- regenerate --------------------------------------------------------------------------
async def test_regenerate_answers_again_and_supersedes_the_old_answer(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["最初の答え", "二つ目の答え", "次の答え"])
    chat = service(store, tokenizer, generator)
    first = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    again = ButtonSink()
    result = await chat.regenerate("test", first.ref, "press-1", "alice", again)
    assert result is ControlResult.DONE
    assert again.final() == "二つ目の答え" and again.offered == [STREAMING, ANSWERED]
    assert again.retired == [first.ref]  # the old answer loses 「もう一度」
    assert generator.prompts[1] == generator.prompts[0]  # the same question, same context
    assert await history(store) == [(Speaker.USER, "質問"), (Speaker.SYSTEM, "二つ目の答え")]
    # Kept in storage, superseded.
    rows = sqlite3.connect(store.path).execute(
        "SELECT text, superseded FROM turns WHERE speaker = 'システム' ORDER BY id").fetchall()
    assert rows == [("最初の答え", 1), ("二つ目の答え", 0)]
    # The next question sees only the new answer.
    await chat.handle(KEY, ask("続き", "m2"), ButtonSink())
    assert "最初の答え" not in generator.prompts[2] and "二つ目の答え" in generator.prompts[2]


async def test_only_the_newest_answer_can_be_regenerated(store: HistoryStore,
                                                         tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    first, second = ButtonSink(), ButtonSink()
    await chat.handle(KEY, ask("一つ目", "m1"), first)
    await chat.handle(KEY, ask("二つ目", "m2"), second)
    assert second.retired == [first.ref]  # a newer question retires the earlier answer
    late = ButtonSink()
    assert await chat.regenerate("test", first.ref, "p1", "alice", late) is \
        ControlResult.NOT_LATEST
    assert late.events == [] and len(generator.prompts) == 2
    assert await chat.regenerate("test", second.ref, "p2", "mallory", late) is \
        ControlResult.NOT_ALLOWED
    assert await chat.regenerate("test", second.ref, "p3", "mod", late,
                                 moderator=True) is ControlResult.DONE
    assert len(generator.prompts) == 3


async def test_a_repeated_press_regenerates_once(store: HistoryStore,
                                                 tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    first = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    sinks = [ButtonSink(), ButtonSink(), ButtonSink()]
    results = await asyncio.gather(
        chat.regenerate("test", first.ref, "press", "alice", sinks[0]),
        chat.regenerate("test", first.ref, "press", "alice", sinks[1]),
        chat.regenerate("test", first.ref, "other-press", "alice", sinks[2]))
    assert len(generator.prompts) == 2  # one regeneration, whatever the interleaving
    assert sum(1 for sink in sinks if sink.events) == 1
    assert ControlResult.DONE in results


async def test_a_regeneration_cut_by_a_crash_is_answered_after_the_restart(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["最初", "やり直し"])
    chat = service(store, tokenizer, generator)
    first = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    answer = await store.answer_at("test", first.ref)
    assert answer is not None
    await store.accept_regenerate(answer, "press")  # recorded, then the process died
    sinks: list[ButtonSink] = []

    def make_sink(delivery: object) -> ButtonSink:
        sinks.append(ButtonSink())
        return sinks[-1]

    report = await service(store, tokenizer, generator).recover("test", make_sink)
    assert report.answered == 1 and sinks[0].final() == "やり直し"
    assert await history(store) == [(Speaker.USER, "質問"), (Speaker.SYSTEM, "やり直し")]


# ----- feedback -----------------------------------------------------------------------------
async def test_one_vote_per_person_per_answer_and_a_second_press_changes_it(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    counted: list[tuple[str, str]] = []
    chat = service(store, tokenizer, ScriptedGenerator(),
                   on_feedback=lambda platform, value: counted.append((platform, value)))
    sink = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), sink)
    assert await chat.feedback("test", sink.ref, "bob", "good") is ControlResult.DONE
    assert await chat.feedback("test", sink.ref, "bob", "good") is ControlResult.DONE
    assert await store.feedback_counts() == {"good": 1, "bad": 0}
    await chat.feedback("test", sink.ref, "bob", "bad")
    await chat.feedback("test", sink.ref, "carol", "bad")
    assert await store.feedback_counts() == {"good": 0, "bad": 2}
    assert counted == [("test", "good"), ("test", "bad"), ("test", "bad")]
    assert await chat.feedback("test", "nothing-here", "bob", "good") is ControlResult.NOT_FOUND
    with pytest.raises(ValueError):
        await chat.feedback("test", sink.ref, "bob", "meh")
    # A person's votes go with `forget`.
    await store.forget_author("bob")
    assert await store.feedback_counts() == {"good": 0, "bad": 1}


async def test_answers_today_count_regenerations(store: HistoryStore,
                                                 tokenizer: Tokenizer) -> None:
    chat = service(store, tokenizer, ScriptedGenerator(default="答え"))
    first = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    await chat.regenerate("test", first.ref, "p", "alice", ButtonSink())
    assert await store.answers_since(0) == 2


# ----- which controls, when ------------------------------------------------------------------
async def test_notices_and_failures_offer_no_buttons(store: HistoryStore,
                                                     tokenizer: Tokenizer) -> None:
    chat = service(store, tokenizer, ScriptedGenerator([RuntimeError("boom"), ""]))
    failed, empty, usage = ButtonSink(), ButtonSink(), ButtonSink()
    assert await chat.handle(KEY, ask("質問", "m1"), failed) is Outcome.FAILED
    assert failed.offered[-1] == NO_CONTROLS and failed.kinds()[-1] == "fail"
    await chat.handle(KEY, ask("質問", "m2"), empty)
    assert empty.final() == EMPTY_ANSWER and empty.offered[-1] == ANSWERED  # may be redone
    await chat.handle(KEY, ask("", "m3"), usage)
    assert usage.offered == [NO_CONTROLS]


async def test_a_database_from_before_the_buttons_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path)
    for migration in MIGRATIONS[:4]:
        raw.executescript(migration)
    raw.execute("INSERT INTO conversations (platform, workspace, channel, thread, created_at)"
                " VALUES ('test', 'w', 'c', 't', 0)")
    raw.execute("INSERT INTO turns (conversation_id, speaker, text, created_at)"
                " VALUES (1, 'システム', '古い答え', 0)")
    raw.execute("PRAGMA user_version = 4")
    raw.commit()
    raw.close()
    store = await HistoryStore.open(path)
    try:
        turns = await store.recent_turns(1, 10)
        assert [t.turn.text for t in turns] == ["古い答え"]
        assert await store.feedback_counts() == {"good": 0, "bad": 0}
    finally:
        await store.close()


async def test_asking_about_someone_elses_message_keeps_it_theirs(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    """「rinna に聞く」: the text is the writer's (forget/export find it under their id); the
    person who asked may stop or redo the answer, and the generator counts it as theirs."""
    generator = HeldGenerator()
    chat = service(store, tokenizer, generator)
    sink = ButtonSink()
    message = IncomingMessage("誰かの投稿", "m1", author="writer", asker="presser")
    answering = asyncio.create_task(chat.handle(KEY, message, sink))
    await sink.updated.wait()
    assert generator.owners == ["test:presser"]
    assert await chat.stop("test", sink.ref, "writer") is ControlResult.NOT_ALLOWED
    assert await chat.stop("test", sink.ref, "presser") is ControlResult.DONE
    await answering
    assert [t.text for t in await store.author_turns("writer")] == ["誰かの投稿"]
    assert await store.author_turns("presser") == []
    generator.release.set()
    again = ButtonSink()
    assert await chat.regenerate("test", sink.ref, "p", "presser", again) is ControlResult.DONE
    assert generator.owners == ["test:presser", "test:presser"]


class HeldLocate(ButtonSink):
    """Holds the regeneration between its record and its turn (where `locate` runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = asyncio.Event(), asyncio.Event()

    async def locate(self) -> None:
        self.entered.set()
        await self.go.wait()


async def test_a_question_that_overtakes_a_regeneration_wins(store: HistoryStore,
                                                             tokenizer: Tokenizer) -> None:
    """もう一度 pressed, then a new question answered before the regeneration's turn: the
    regeneration ends with a notice instead of answering an old question after a new one."""
    generator = ScriptedGenerator(["A1", "A2", "unused"])
    chat = service(store, tokenizer, generator)
    first = ButtonSink()
    await chat.handle(KEY, ask("Q1", "m1"), first)
    again = HeldLocate()
    redo = asyncio.create_task(chat.regenerate("test", first.ref, "press", "alice", again))
    await again.entered.wait()
    second = ButtonSink()
    assert await chat.handle(KEY, ask("Q2", "m2"), second) is Outcome.ANSWERED
    assert second.retired == [first.ref]
    again.go.set()
    assert await redo is ControlResult.DONE
    assert again.kinds()[-1] == "fail" and again.offered[-1] == NO_CONTROLS
    assert again.final() == OutdatedRequest.user_message
    assert again.retired == []
    assert await history(store) == [(Speaker.USER, "Q1"), (Speaker.SYSTEM, "A1"),
                                     (Speaker.USER, "Q2"), (Speaker.SYSTEM, "A2")]
    assert len(generator.prompts) == 2
    assert await chat.regenerate("test", second.ref, "p2", "alice", ButtonSink()) is \
        ControlResult.DONE  # the newest answer can still be redone


async def test_a_failed_regeneration_leaves_the_old_answer_redoable(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["A1", QueueFullError("full"), "A1 again"])
    chat = service(store, tokenizer, generator)
    first = ButtonSink()
    await chat.handle(KEY, ask("Q1", "m1"), first)
    failed = ButtonSink()
    assert await chat.regenerate("test", first.ref, "p1", "alice", failed) is ControlResult.DONE
    assert failed.kinds()[-1] == "fail" and failed.retired == []  # 「もう一度」 stays on A1
    retry = ButtonSink()
    assert await chat.regenerate("test", first.ref, "p2", "alice", retry) is ControlResult.DONE
    assert retry.final() == "A1 again" and retry.retired == [first.ref]
    # Shutting down: no new regeneration, said as such.
    await chat.shutdown(0)
    assert await chat.regenerate("test", retry.ref, "p3", "alice", ButtonSink()) is \
        ControlResult.CLOSING


async def test_a_press_finds_its_answer_only_by_the_whole_ref_its_sink_named(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    """The core compares refs whole, knowing no channel: a platform whose handles are unique
    only within a channel names its messages `channel/handle` (Slack: a press of the same ts
    in another channel finds nothing, tests/test_slack_controls.py)."""
    chat = service(store, tokenizer, ScriptedGenerator())
    sink = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), sink)
    assert (await chat.answer_at("test", sink.ref)) is not None
    assert await chat.answer_at("test", f"elsewhere/{sink.ref}") is None
    assert await chat.feedback("test", f"elsewhere/{sink.ref}", "bob", "good") is \
        ControlResult.NOT_FOUND
    assert await chat.stop("test", f"elsewhere/{sink.ref}", "bob") is ControlResult.NOT_FOUND
    assert await chat.feedback("test", sink.ref, "bob", "good") is ControlResult.DONE


async def test_forget_clears_who_asked_from_the_records(store: HistoryStore,
                                                        tokenizer: Tokenizer) -> None:
    chat = service(store, tokenizer, ScriptedGenerator())
    sink = ButtonSink()
    await chat.handle(KEY, IncomingMessage("誰かの投稿", "m1", author="writer", asker="presser"),
                      sink)
    await store.forget_author("presser")
    await store.forget_author("writer")
    rows = sqlite3.connect(store.path).execute(
        "SELECT author, asker FROM deliveries").fetchall()
    assert rows == [(None, None)]


async def test_a_reset_retires_the_last_answer(store: HistoryStore,
                                               tokenizer: Tokenizer) -> None:
    """After a reset the last answer is out of the history: もう一度 goes from it (a press
    would be refused anyway)."""
    chat = service(store, tokenizer, ScriptedGenerator())
    answered = ButtonSink()
    await chat.handle(KEY, ask("質問", "m1"), answered)
    confirm = ButtonSink()
    assert await chat.reset(KEY, "r1", sink=confirm, notice="リセットしました。")
    assert confirm.retired == [answered.ref] and confirm.offered == [NO_CONTROLS]
    assert await chat.regenerate("test", answered.ref, "p", "alice", ButtonSink()) is \
        ControlResult.NOT_LATEST


class GatedStore(HistoryStore):
    """Holds the storing of a placeholder's handle until `go` is set."""

    entered: asyncio.Event
    go: asyncio.Event

    async def show_placeholder(self, delivery: Delivery, ref: str) -> bool:
        self.entered.set()
        await self.go.wait()
        return await super().show_placeholder(delivery, ref)


async def test_stop_pressed_before_the_placeholder_is_recorded_still_stops(
        tmp_path: Path, tokenizer: Tokenizer) -> None:
    store = await GatedStore.open(tmp_path / "gated.sqlite3")
    store.entered, store.go = asyncio.Event(), asyncio.Event()
    try:
        generator = HeldGenerator()
        chat = service(store, tokenizer, generator)
        sink = ButtonSink()
        answering = asyncio.create_task(chat.handle(KEY, ask("質問", "m1"), sink))
        await store.entered.wait()  # the placeholder (with 「停止」) is up, its handle not stored
        assert await chat.stop("test", sink.ref, "mallory") is ControlResult.NOT_ALLOWED
        assert await chat.stop("test", sink.ref, "alice") is ControlResult.DONE
        store.go.set()
        assert await answering is Outcome.ANSWERED
        assert sink.final() == STOPPED_MARK and generator.prompts == []
    finally:
        await store.close()
