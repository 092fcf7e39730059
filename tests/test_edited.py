"""Edited questions, in the core (bot/core/edited.py through the chat service): the newest question
edited within the window is answered again, once per edit (redeliveries, restarts), after its
running answer is stopped; the old answer is marked superseded; unchanged text and older
messages only touch the history. Real SQLite; a scripted generator. The platforms' own tests
drive the same path through their adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bot.core.chat import ChatConfig, ChatService
from bot.core.controls import STOPPED_MARK
from bot.conversation import Speaker
from bot.core.edited import SUPERSEDED_NOTICE, EditOutcome, edit_key, with_files
from bot.ports.records import Delivery
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.test_controls import KEY, ButtonSink, HeldGenerator, ask, history


class EditSink(ButtonSink):
    """A button sink that also records the answers it marks superseded."""

    def __init__(self) -> None:
        super().__init__()
        self.superseded: list[tuple[str, str, str]] = []

    async def supersede(self, ref: str, text: str, notice: str) -> None:
        self.superseded.append((ref, text, notice))


class FirstHeld(HeldGenerator):
    """Holds its first answer until stopped; later answers stream at once."""

    async def stream(self, prompt: str, params: object = None, *, owner: str | None = None,
                     on_wait: object = None) -> AsyncIterator[str]:
        if self.prompts:
            self.prompts.append(prompt)
            yield "新しい答え"
            return
        async for delta in super().stream(prompt, params, owner=owner,  # type: ignore[arg-type]
                                          on_wait=on_wait):  # type: ignore[arg-type]
            yield delta


def service(store: HistoryStore, tokenizer: Tokenizer, generator: object,
            window_s: float = 600.0) -> ChatService:
    return ChatService(store, generator, tokenizer,  # type: ignore[arg-type]
                       ChatConfig(prompt_budget=1920, stream_interval_s=0.0,
                                  edit_window_s=window_s))


class Sinks:
    def __init__(self) -> None:
        self.made: list[EditSink] = []
        self.first = asyncio.Event()  # set once a sink is made

    def __call__(self, delivery: Delivery) -> EditSink:
        self.made.append(EditSink())
        self.first.set()
        return self.made[-1]


async def test_an_edited_newest_question_gets_one_new_answer_and_marks_the_old(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["古い答え", "新しい答え"])
    chat = service(store, tokenizer, generator)
    first = EditSink()
    await chat.handle(KEY, ask("東京の人口は?", "m1"), first)
    sinks = Sinks()
    outcome = await chat.edits.edited("test", "m1", "大阪の人口は?", edit_id="e1",
                                      sink_for=sinks)
    assert outcome is EditOutcome.ANSWERED_AGAIN
    [new] = sinks.made
    assert new.final() == "新しい答え"
    assert new.superseded == [(first.ref, "古い答え", SUPERSEDED_NOTICE)]
    assert "大阪の人口は?" in generator.prompts[1] and "東京" not in generator.prompts[1]
    assert await history(store) == [(Speaker.USER, "大阪の人口は?"),
                                     (Speaker.SYSTEM, "新しい答え")]
    # The same edit again (a redelivered event): nothing new.
    again = await chat.edits.edited("test", "m1", "大阪の人口は?", edit_id="e1",
                                    sink_for=sinks)
    assert again is EditOutcome.DUPLICATE
    assert len(sinks.made) == 1 and len(generator.prompts) == 2


async def test_unchanged_text_changes_nothing(store: HistoryStore,
                                              tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    await chat.handle(KEY, ask("質問 https://example.com", "m1"), EditSink())
    sinks = Sinks()
    assert await chat.edits.edited("test", "m1", "質問 https://example.com", edit_id="unfurl",
                                   sink_for=sinks) is EditOutcome.UNCHANGED
    assert sinks.made == [] and len(generator.prompts) == 1


async def test_an_older_question_edit_updates_the_history_only(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    await chat.handle(KEY, ask("一つ目", "m1"), EditSink())
    await chat.handle(KEY, ask("二つ目", "m2"), EditSink())
    sinks = Sinks()
    assert await chat.edits.edited("test", "m1", "一つ目(直した)", edit_id="e1",
                                   sink_for=sinks) is EditOutcome.HISTORY
    assert sinks.made == [] and len(generator.prompts) == 2
    assert (await history(store))[0] == (Speaker.USER, "一つ目(直した)")


async def test_an_edit_after_the_window_updates_the_history_only(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator, window_s=0.0)
    await chat.handle(KEY, ask("質問", "m1"), EditSink())
    sinks = Sinks()
    assert await chat.edits.edited("test", "m1", "質問(直した)", edit_id="e1",
                                   sink_for=sinks) is EditOutcome.HISTORY
    assert sinks.made == []


async def test_an_edit_mid_answer_stops_the_old_answer_first(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = FirstHeld()
    chat = service(store, tokenizer, generator)
    first = EditSink()
    answering = asyncio.create_task(chat.handle(KEY, ask("長い話をして", "m1"), first))
    await first.updated.wait()
    sinks = Sinks()
    outcome = await chat.edits.edited("test", "m1", "短い話をして", edit_id="e1",
                                      sink_for=sinks)
    assert outcome is EditOutcome.ANSWERED_AGAIN
    await answering
    assert generator.aborted.is_set()
    assert first.final() == f"途中まで書いた\n\n{STOPPED_MARK}"  # stopped, not finished
    [new] = sinks.made
    assert new.superseded and new.superseded[0][0] == first.ref
    assert new.final() == "新しい答え"
    assert "短い話をして" in generator.prompts[1]
    assert await history(store) == [(Speaker.USER, "短い話をして"),
                                     (Speaker.SYSTEM, "新しい答え")]


async def test_an_edit_taken_on_before_a_crash_is_answered_once_on_redelivery(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["古い答え", "新しい答え"])
    chat = service(store, tokenizer, generator)
    first = EditSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    answer = await store.delivery("test", "m1")
    assert answer is not None
    await store.edit_delivered("test", "m1", "直した質問")
    await store.accept_regenerate(answer, edit_key("m1", "e1"))  # then the process died
    restarted = service(store, tokenizer, generator)
    sinks = Sinks()
    assert await restarted.edits.edited("test", "m1", "直した質問", edit_id="e1",
                                        sink_for=sinks) is EditOutcome.ANSWERED_AGAIN
    assert [s.final() for s in sinks.made] == ["新しい答え"]
    # the old answer is struck as on the live path, though this process never saw the edit
    assert sinks.made[0].superseded == [(first.ref, "古い答え", SUPERSEDED_NOTICE)]
    assert await restarted.edits.edited("test", "m1", "直した質問", edit_id="e1",
                                        sink_for=sinks) is EditOutcome.DUPLICATE
    assert len(generator.prompts) == 2


async def test_an_edit_taken_on_before_a_crash_is_answered_by_recovery_marking_the_old(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    """The process died after recording an edit's new answer, before marking the old one: the
    start-up recovery answers it and strikes the old answer, as the live path would have."""
    generator = ScriptedGenerator(["古い答え", "新しい答え"])
    chat = service(store, tokenizer, generator)
    first = EditSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    answer = await store.delivery("test", "m1")
    assert answer is not None
    await store.edit_delivered("test", "m1", "直した質問")
    await store.accept_regenerate(answer, edit_key("m1", "e1"))  # then the process died
    restarted = service(store, tokenizer, generator)
    sinks = Sinks()
    report = await restarted.recover("test", sinks)
    assert report.answered == 1
    [new] = sinks.made
    assert new.final() == "新しい答え"
    assert new.superseded == [(first.ref, "古い答え", SUPERSEDED_NOTICE)]
    assert "直した質問" in generator.prompts[1]


async def test_an_edit_whose_new_answer_ended_with_a_notice_is_not_answered_again(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    """The new answer to an edit ended with the busy notice: its record is finished (failed,
    not answered), so the same edit delivered again answers nothing."""
    from bot.errors import QueueFullError
    from bot.ports.records import DeliveryState

    generator = ScriptedGenerator(["古い答え", QueueFullError("full"), "三つ目"])
    chat = service(store, tokenizer, generator)
    await chat.handle(KEY, ask("質問", "m1"), EditSink())
    sinks = Sinks()
    assert await chat.edits.edited("test", "m1", "直した質問", edit_id="e1",
                                   sink_for=sinks) is EditOutcome.ANSWERED_AGAIN
    request = await store.delivery("test", edit_key("m1", "e1"))
    assert request is not None and request.state is DeliveryState.FAILED
    assert await chat.edits.edited("test", "m1", "直した質問", edit_id="e1",
                                   sink_for=sinks) is EditOutcome.DUPLICATE
    assert len(sinks.made) == 1 and len(generator.prompts) == 2


def test_with_files_keeps_the_attached_files() -> None:
    stored = "古い質問\n\n[添付ファイル: a.txt]\n中身"
    assert with_files(stored, "新しい質問") == "新しい質問\n\n[添付ファイル: a.txt]\n中身"
    assert with_files("[添付ファイル: a.txt]\n中身", "質問") == "質問\n\n[添付ファイル: a.txt]\n中身"
    assert with_files("質問だけ", "新しい") == "新しい"


async def test_the_new_answer_may_be_stopped_by_who_asked_only(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    from bot.core.controls import ControlResult

    generator = HeldGenerator()
    chat = service(store, tokenizer, generator)
    generator.release.set()  # the first answer runs to its end
    first = EditSink()
    await chat.handle(KEY, ask("質問", "m1"), first)
    generator.release.clear()  # the new answer holds until stopped
    sinks = Sinks()
    editing = asyncio.create_task(chat.edits.edited("test", "m1", "直した質問", edit_id="e1",
                                                    sink_for=sinks))
    await sinks.first.wait()
    new = sinks.made[0]
    await new.updated.wait()
    assert await chat.stop("test", new.ref, "mallory") is ControlResult.NOT_ALLOWED
    assert await chat.stop("test", new.ref, "alice") is ControlResult.DONE
    assert await editing is EditOutcome.ANSWERED_AGAIN
    assert new.final() == f"途中まで書いた\n\n{STOPPED_MARK}"


async def test_a_second_edit_is_answered_again_and_strikes_the_latest_answer(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["答え0", "答え1", "答え2"])
    chat = service(store, tokenizer, generator)
    await chat.handle(KEY, ask("質問0", "m1"), EditSink())
    sinks = Sinks()
    assert await chat.edits.edited("test", "m1", "質問1", edit_id="e1",
                                   sink_for=sinks) is EditOutcome.ANSWERED_AGAIN
    assert await chat.edits.edited("test", "m1", "質問2", edit_id="e2",
                                   sink_for=sinks) is EditOutcome.ANSWERED_AGAIN
    first_edit, second_edit = sinks.made
    assert second_edit.final() == "答え2"
    # The answer struck is the first edit's (the one shown under the question), not 答え0.
    assert second_edit.superseded == [(first_edit.ref, "答え1", SUPERSEDED_NOTICE)]
    assert "質問2" in generator.prompts[2] and "答え1" not in generator.prompts[2]
    assert await history(store) == [(Speaker.USER, "質問2"), (Speaker.SYSTEM, "答え2")]


async def test_an_edit_after_a_regeneration_is_answered_again(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator(["答え0", "やり直し", "答え1"])
    chat = service(store, tokenizer, generator)
    first = EditSink()
    await chat.handle(KEY, ask("質問0", "m1"), first)
    again = EditSink()
    await chat.regenerate("test", first.ref, "press-1", "alice", again)
    assert again.final() == "やり直し"
    sinks = Sinks()
    assert await chat.edits.edited("test", "m1", "質問1", edit_id="e1",
                                   sink_for=sinks) is EditOutcome.ANSWERED_AGAIN
    [new] = sinks.made
    assert new.final() == "答え1"
    assert new.superseded == [(again.ref, "やり直し", SUPERSEDED_NOTICE)]
    assert await history(store) == [(Speaker.USER, "質問1"), (Speaker.SYSTEM, "答え1")]


async def test_an_edit_stops_a_regeneration_still_being_written(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    generator = HeldGenerator()
    chat = service(store, tokenizer, generator)
    generator.release.set()  # the first answer streams whole
    first = EditSink()
    await chat.handle(KEY, ask("質問0", "m1"), first)
    generator.release.clear()  # 「もう一度」's answer is held
    again = EditSink()
    regenerating = asyncio.create_task(
        chat.regenerate("test", first.ref, "press-1", "alice", again))
    await again.updated.wait()
    sinks = Sinks()
    editing = asyncio.create_task(chat.edits.edited("test", "m1", "質問1", edit_id="e1",
                                                    sink_for=sinks))
    stopped = asyncio.create_task(generator.aborted.wait())
    await asyncio.wait({stopped, editing}, return_when=asyncio.FIRST_COMPLETED)
    was_stopped = stopped.done()
    generator.release.set()
    await regenerating
    assert was_stopped, "the edit did not stop the regeneration being written"
    assert await editing is EditOutcome.ANSWERED_AGAIN
    assert again.final() == f"途中まで書いた\n\n{STOPPED_MARK}"
    [new] = sinks.made
    assert new.superseded and new.superseded[0][0] == again.ref
    assert "質問1" in generator.prompts[2]
    assert await history(store) == [(Speaker.USER, "質問1"),
                                     (Speaker.SYSTEM, "途中まで書いたの続き")]
