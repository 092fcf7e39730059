"""Fair sharing through the chat service: who asked reaches the generator, one user's extra
requests get a notice (never stored as an answer), and the queue notice is edited sparingly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bot.core.chat import ChatConfig, ChatService, Outcome
from bot.conversation import ConversationKey, IncomingMessage, Speaker
from bot.engine.generation import GenerationParams
from bot.engine.generator import LocalGenerator, WaitCallback
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import RecordingSink, ScriptedGenerator
from tests.slack_fakes import eventually

BUSY = "前の質問に答えています。終わるまでお待ちください。"


async def test_the_author_is_the_owner_per_platform(store: HistoryStore,
                                                    tokenizer: Tokenizer) -> None:
    generator = ScriptedGenerator()
    chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))
    await chat.handle(ConversationKey("slack", "T", "C", "1"),
                      IncomingMessage("質問", "m1", "U1"), RecordingSink())
    await chat.handle(ConversationKey("discord", "G", "C", "1"),
                      IncomingMessage("質問", "m1", "U1"), RecordingSink())
    await chat.handle(ConversationKey("slack", "T", "C", "2"),
                      IncomingMessage("質問", "m2", "U2"), RecordingSink())
    assert generator.owners == ["slack:U1", "discord:U1", "slack:U2"]


async def test_a_users_third_question_at_once_gets_the_busy_notice(
        store: HistoryStore, generator: LocalGenerator, tokenizer: Tokenizer) -> None:
    long = GenerationParams(max_new_tokens=1800, do_sample=False)
    chat = ChatService(store, generator, tokenizer,
                       ChatConfig(stream_interval_s=0.0, params=long))  # MAX_PER_USER 2
    keys = [ConversationKey("test", "w", "c", str(i)) for i in range(3)]
    sinks = [RecordingSink() for _ in keys]
    tasks = [asyncio.create_task(chat.handle(key, IncomingMessage(f"質問{i}", f"m{i}", "U1"),
                                             sink))
             for i, (key, sink) in enumerate(zip(keys, sinks, strict=True))]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    (refused,) = done
    assert refused.result() is Outcome.FAILED
    index = tasks.index(refused)
    assert sinks[index].final() == BUSY
    assert all(not sink.done.is_set() for sink in sinks[:index] + sinks[index + 1:])
    for task in pending:  # the other two were being answered
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    conversation = await store.find(keys[index])
    assert conversation is not None
    stored = [(t.turn.speaker, t.turn.text) for t in await store.recent_turns(conversation, 10)]
    assert stored == [(Speaker.USER, f"質問{index}")]  # the turn is kept, the notice is not
    await eventually(lambda: generator.stats().waiting + generator.stats().running == 0)


class QueuedGenerator(ScriptedGenerator):
    """Reports a scripted run of queue positions, moving the service's clock between them,
    then streams its reply."""

    def __init__(self, positions: list[int], now: list[float], step_s: float) -> None:
        super().__init__(default="答えです。")
        self.positions, self.now, self.step_s = positions, now, step_s

    async def stream(self, prompt: str, params: GenerationParams | None = None, *,
                     owner: str | None = None,
                     on_wait: WaitCallback | None = None) -> AsyncIterator[str]:
        for position in self.positions:
            self.now[0] += self.step_s
            assert on_wait is not None
            if (waited := on_wait(position)) is not None:
                await waited
        async for delta in super().stream(prompt, params, owner=owner):
            yield delta


async def test_the_waiting_notice_changes_at_most_once_per_interval(
        store: HistoryStore, tokenizer: Tokenizer) -> None:
    now = [100.0]
    generator = QueuedGenerator([5, 5, 4, 3, 2, 1], now, step_s=0.4)
    chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=1.0),
                       clock=lambda: now[0])
    sink = RecordingSink()
    assert await chat.handle(ConversationKey("test", "w", "c", "t"),
                             IncomingMessage("質問", "m1", "U1"), sink) is Outcome.ANSWERED
    waits = [position for kind, position in sink.events if kind == "waiting"]
    assert waits == [5, 3]  # 5 at 0.4 s, 3 at 1.6 s; the rest changed too soon after
    assert sink.final() == "答えです。"


async def test_an_unchanged_position_is_not_shown_again(store: HistoryStore,
                                                        tokenizer: Tokenizer) -> None:
    now = [100.0]
    generator = QueuedGenerator([2, 2, 2, 1], now, step_s=5.0)
    chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=1.0),
                       clock=lambda: now[0])
    sink = RecordingSink()
    await chat.handle(ConversationKey("test", "w", "c", "t"),
                      IncomingMessage("質問", "m1", "U1"), sink)
    assert [p for kind, p in sink.events if kind == "waiting"] == [2, 1]
