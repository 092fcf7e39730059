"""Deletion follows the text wherever it is (issue 22): a message still waiting to be answered
(queued behind another answer, or deferred by a shutdown) is reached by a platform delete or
edit and by `forget --user`, and listed by `export --user`; a message asked about with
「rinna に聞く」 is reached through the sources recorded with its answer. The real chat service
and SQLite file; only the model's words are scripted."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from bot.core.chat import ChatConfig, ChatService, Outcome
from bot.conversation import ConversationKey, IncomingMessage, Speaker
from bot.errors import MessageWithdrawn
from bot.core.edits import PrivateData
from bot.service.privacy import export_user
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import RecordingSink, ScriptedGenerator

KEY = ConversationKey("test", "w", "c", "t")
CARD = "カード番号 4111 1111 1111 1111"
WITHDRAWN = MessageWithdrawn.user_message


def on_disk(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal"))
                    if p.exists())


def service(store: HistoryStore, tokenizer: Tokenizer, generator: ScriptedGenerator) -> ChatService:
    return ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))


async def until(check) -> None:  # type: ignore[no-untyped-def]
    """Wait on a condition (each try yields to the loop), never on a sleep."""
    for _ in range(100_000):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


async def queued_behind_an_answer(store: HistoryStore, tokenizer: Tokenizer, text: str
                                  ) -> tuple[ChatService, ScriptedGenerator, asyncio.Event,
                                             asyncio.Task[Outcome], asyncio.Task[Outcome],
                                             RecordingSink]:
    """m0 is being answered (held at the gate); m1 (`text`, by U1) waits for the lock."""
    gate = asyncio.Event()
    generator = ScriptedGenerator(default="答え", gate=gate)
    chat = service(store, tokenizer, generator)
    first = asyncio.create_task(chat.handle(KEY, IncomingMessage("最初の質問", "m0", "U0"),
                                            RecordingSink()))
    await until(lambda: generator.prompts)
    sink = RecordingSink()
    recorded = asyncio.Event()

    async def accepted() -> None:  # what an adapter acknowledges the platform event on
        recorded.set()

    second = asyncio.create_task(chat.handle(KEY, IncomingMessage(text, "m1", "U1"), sink,
                                             accepted=accepted))
    await recorded.wait()
    return chat, generator, gate, first, second, sink


async def history(store: HistoryStore) -> list[tuple[Speaker, str]]:
    conversation = await store.find(KEY)
    assert conversation is not None
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 100))]


async def test_a_waiting_message_deleted_is_dropped_and_its_placeholder_told(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    _, generator, gate, first, second, sink = await queued_behind_an_answer(
        store, tokenizer, CARD)
    assert CARD.encode() in on_disk(store.path)  # waiting, its text is in the record
    assert await PrivateData(store).message_deleted("test", "m1")
    assert b"4111" not in on_disk(store.path)  # gone at once, not when its turn comes
    gate.set()
    assert await first is Outcome.ANSWERED
    assert await second is Outcome.FAILED
    assert sink.final() == WITHDRAWN and sink.kinds()[-1] == "fail"
    assert len(generator.prompts) == 1 and all("4111" not in p for p in generator.prompts)
    assert await history(store) == [(Speaker.USER, "最初の質問"), (Speaker.SYSTEM, "答え")]
    # ended with the notice: done, as failed (withdrawn, then the notice shown)
    assert (await store.delivery("test", "m1")).state == "failed"  # type: ignore[union-attr]


async def test_a_waiting_message_edited_is_answered_with_its_new_text(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    _, generator, gate, first, second, sink = await queued_behind_an_answer(
        store, tokenizer, CARD)
    assert await PrivateData(store).message_edited("test", "m1", "カード番号は伏せます")
    gate.set()
    assert await first is Outcome.ANSWERED and await second is Outcome.ANSWERED
    assert "カード番号は伏せます" in generator.prompts[-1] and "4111" not in generator.prompts[-1]
    assert (Speaker.USER, "カード番号は伏せます") in await history(store)
    assert b"4111" not in on_disk(store.path)


async def test_forget_and_export_reach_a_waiting_message(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    _, generator, gate, first, second, sink = await queued_behind_an_answer(
        store, tokenizer, CARD)
    out = io.StringIO()
    assert await export_user(store.path, "U1", None, out) == 1
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["text"] == CARD and line["waiting"] is True and line["id"] is None
    assert await store.forget_author("U1") == 1
    assert b"4111" not in on_disk(store.path)
    gate.set()
    assert await first is Outcome.ANSWERED and await second is Outcome.FAILED
    assert sink.final() == WITHDRAWN and all("4111" not in p for p in generator.prompts)
    out = io.StringIO()
    assert await export_user(store.path, "U1", None, out) == 0 and out.getvalue() == ""


async def test_a_message_deferred_by_a_shutdown_is_forgotten_before_the_restart(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    chat = service(store, tokenizer, ScriptedGenerator(default="答え"))
    await chat.shutdown(grace_s=0.0)
    assert await chat.handle(KEY, IncomingMessage(CARD, "m1", "U1"), RecordingSink()) \
        is Outcome.DEFERRED
    assert await store.forget_author("U1") == 1
    generator = ScriptedGenerator(default="再開後の答え")
    sinks: dict[str, RecordingSink] = {}
    await service(store, tokenizer, generator).recover(
        "test", lambda d: sinks.setdefault(d.delivery_key, RecordingSink()))
    assert sinks["m1"].final() == WITHDRAWN and generator.prompts == []
    assert b"4111" not in on_disk(store.path) and await store.unfinished("test") == []


async def test_an_answer_built_from_another_message_is_reached_by_its_delete_and_edit(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    """「rinna に聞く」: the delivery is the button press; the text is the message asked about,
    whose own id comes with the platform's delete or edit event."""
    generator = ScriptedGenerator(default="答え")
    chat = service(store, tokenizer, generator)
    asked = IncomingMessage(CARD, "press-1", author="U2", asker="U1", sources=("msg-9",))
    assert await chat.handle(KEY, asked, RecordingSink()) is Outcome.ANSWERED
    assert (Speaker.USER, CARD) in await history(store)
    private = PrivateData(store)
    assert await private.message_edited("test", "msg-9", "番号は消しました")
    assert (Speaker.USER, "番号は消しました") in await history(store)
    assert await private.message_deleted("test", "msg-9")
    assert [s for s, _ in await history(store)] == [Speaker.SYSTEM]
    assert b"4111" not in on_disk(store.path) and "番号".encode() not in on_disk(store.path)
    assert not await private.message_deleted("test", "msg-404")  # reaches nothing else
