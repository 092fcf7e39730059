"""Conversations longer than the window, on the real tiny model, the real store and the real chat
service: the honest notice, the rolling summary at the prompt's head (written in the
background, preempted by questions), and what edits and `forget --user` do to it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.config import Settings
from bot.conversation import ConversationKey, IncomingMessage, Speaker, Turn
from bot.core.chat import ChatConfig, ChatService
from bot.core.history_window import HistoryWindow
from bot.core.notices import as_history, window_notice
from bot.core.prompt import SEPARATOR, format_turn
from bot.core.summary import (
    INSTRUCTION,
    INSTRUCTION_AFTER,
    MAX_CALLS,
    SUMMARY_QUESTION,
    RollingSummaries,
    Summariser,
    exchange,
)
from bot.engine.generation import GenerationParams
from bot.engine.generator import LocalGenerator
from bot.engine.tokenizer import Tokenizer
from bot.service.privacy import forget_user
from storage.history import HistoryStore
from tests.fakes import RecordingSink, ScriptedGenerator
from tests.store_setup import add_turn, take_on

KEY = ConversationKey("slack", "T1", "C1", "100.000001")
OTHER = ConversationKey("slack", "T1", "C2", "200.000001")
SEEDED = GenerationParams(max_new_tokens=40, seed=7)


class Recording:
    """The real generator, passed through, with every prompt it is given noted."""

    def __init__(self, inner: LocalGenerator) -> None:
        self.inner = inner
        self.prompts: list[tuple[str, bool]] = []  # (prompt, background)

    def stream(self, prompt: str, params: GenerationParams | None = None, *,
               owner: str | None = None, on_wait: Any = None,
               background: bool = False) -> AsyncIterator[str]:
        self.prompts.append((prompt, background))
        return self.inner.stream(prompt, params, owner=owner, on_wait=on_wait,
                                 background=background)

    def answers(self) -> list[str]:
        return [p for p, background in self.prompts if not background]

    def summaries(self) -> list[str]:
        return [p for p, background in self.prompts if background]

    async def aclose(self) -> None:
        await self.inner.aclose()


async def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


def build(store: HistoryStore, generator: Recording, tokenizer: Tokenizer, settings: Settings,
          params: GenerationParams = SEEDED, *, summary: bool = True
          ) -> tuple[ChatService, RollingSummaries | None]:
    window = HistoryWindow(store, tokenizer, settings.prompt_budget)
    summaries = RollingSummaries(store, window, Summariser(
        generator, tokenizer, settings.context_tokens, params)) if summary else None
    chat = ChatService(store, generator, tokenizer,
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0),
                       summaries=summaries)
    return chat, summaries


async def thread(store: HistoryStore, key: ConversationKey, messages: int,
                 author: Callable[[int], str] = lambda i: "U1") -> int:
    """A conversation of `messages` stored turns (questions and answers by turns)."""
    claim = await take_on(store, key, f"{key.channel}-seed")
    assert claim is not None
    for i in range(messages):
        if i % 2 == 0:
            await take_on(store, key, f"{key.channel}-m{i}")
            await add_turn(store, claim.conversation, Turn(Speaker.USER, f"質問{i}：猫について教えて"),
                                 ("slack", f"{key.channel}-m{i}"), author=author(i))
        else:
            await add_turn(store, claim.conversation, Turn(Speaker.SYSTEM, f"答え{i}：猫は動物です"))
    return claim.conversation


async def ask(chat: ChatService, key: ConversationKey, text: str, delivery: str,
              sink: RecordingSink | None = None) -> str:
    sink = sink or RecordingSink()
    await chat.handle(key, IncomingMessage(text, delivery, "U9"), sink)
    final = sink.final()
    assert isinstance(final, str) and sink.kinds()[-1] == "finish"
    return final


def turns_read(prompt: str) -> int:
    """Turns in a prompt before the question (texts have no newline: one `<NL>` each)."""
    return prompt.count(SEPARATOR) - 1


def summary_head(summary_text: str, tokenizer: Tokenizer) -> str:
    from bot.ports.records import Summary
    return SEPARATOR.join(format_turn(t, tokenizer)
                          for t in exchange(Summary(summary_text, 0))) + SEPARATOR


@pytest.fixture
async def recording(generator: LocalGenerator) -> Recording:
    return Recording(generator)


async def test_a_300_message_thread_is_told_once_then_read_through_its_summary(
        store: HistoryStore, recording: Recording, tokenizer: Tokenizer,
        settings: Settings) -> None:
    chat, summaries = build(store, recording, tokenizer, settings)
    assert summaries is not None
    conversation = await thread(store, KEY, 300)
    final = await ask(chat, KEY, "最初の質問は何でしたか？", "q1")
    read = turns_read(recording.answers()[0])
    assert 0 < read < 300
    assert final.endswith(window_notice(300 - read, True))  # how many were not read, exactly
    assert not recording.summaries()  # nothing in the background before the answer is sent

    await summaries.idle()
    summary = await store.summary(conversation)
    assert summary is not None and summaries.written == 1
    first, *later = recording.summaries()
    assert first.startswith(f"ユーザー: {INSTRUCTION}<NL>")
    assert all(p.startswith(f"ユーザー: {INSTRUCTION_AFTER}<NL>") for p in later)

    final = await ask(chat, KEY, "次の質問です", "q2")
    prompt = recording.answers()[-1]
    assert prompt.startswith(summary_head(summary.text, tokenizer))  # at the prompt's head
    assert "質問0：" not in prompt and "質問298：" in prompt  # covered turns are not read again
    assert "古いメッセージ" not in final  # told once per conversation
    assert as_history(Turn(Speaker.SYSTEM, final + "\n\n" + window_notice(5, True))) == \
        as_history(Turn(Speaker.SYSTEM, final))  # read back as history, the notice is dropped


async def test_a_question_during_a_summary_starts_before_it_ends_and_it_is_redone(
        store: HistoryStore, recording: Recording, tokenizer: Tokenizer,
        settings: Settings, generator: LocalGenerator) -> None:
    long = GenerationParams(max_new_tokens=150, do_sample=False)
    chat, summaries = build(store, recording, tokenizer, settings, long)
    assert summaries is not None
    conversation = await thread(store, KEY, 300)
    summaries.after_answer(conversation)  # as after an answer in that thread
    before = generator.tokens_generated
    await wait_for(lambda: generator.stats().background == 1
                   and generator.tokens_generated > before + 5)  # the summary is being written
    started_while_summarising: list[bool] = []

    class FirstDelta(RecordingSink):
        async def update(self, text: str) -> None:
            if not started_while_summarising:
                started_while_summarising.append(generator.stats().background == 1
                                                 and summaries.written == 0)
            await super().update(text)

    await ask(chat, OTHER, "急ぎの質問です", "q1", FirstDelta())
    assert started_while_summarising == [True]
    assert generator.preempted >= 1
    await summaries.idle()
    assert summaries.written == 1 and await store.summary(conversation) is not None


async def test_forget_user_removes_the_summaries_holding_that_persons_messages(
        store: HistoryStore, recording: Recording, tokenizer: Tokenizer,
        settings: Settings) -> None:
    chat, summaries = build(store, recording, tokenizer, settings)
    assert summaries is not None
    conversation = await thread(store, KEY, 300, author=lambda i: "U1" if i % 4 == 0 else "U2")
    await ask(chat, KEY, "質問です", "q1")
    await summaries.idle()
    assert await store.summary(conversation) is not None
    assert any("質問0：" in p for p in recording.summaries())

    await forget_user(settings.database_path, "U1", None)  # the operator's command, no model
    assert await store.summary(conversation) is None
    recording.prompts.clear()
    await ask(chat, KEY, "もう一度質問です", "q2")
    assert not recording.answers()[0].startswith(f"ユーザー: {SUMMARY_QUESTION}")
    await summaries.idle()  # rebuilt from what is left
    assert await store.summary(conversation) is not None
    assert recording.summaries() and not any("質問0：" in p or "質問4：" in p
                                             for p in recording.summaries())
    assert any("質問2：" in p for p in recording.summaries())


async def test_editing_a_summarised_message_rebuilds_the_summary(
        store: HistoryStore, recording: Recording, tokenizer: Tokenizer,
        settings: Settings) -> None:
    chat, summaries = build(store, recording, tokenizer, settings)
    assert summaries is not None
    conversation = await thread(store, KEY, 300)
    await ask(chat, KEY, "質問です", "q1")
    await summaries.idle()
    assert await store.summary(conversation) is not None
    assert await chat.message_edited("slack", "C1-m2", "書き直した猫の話")
    assert await store.summary(conversation) is None
    recording.prompts.clear()
    await ask(chat, KEY, "もう一度", "q2")
    await summaries.idle()
    assert await store.summary(conversation) is not None
    assert any("書き直した猫の話" in p for p in recording.summaries())
    assert not any("質問2：" in p for p in recording.summaries())


async def test_with_summary_off_the_oldest_turns_are_only_left_out_and_said_so(
        store: HistoryStore, recording: Recording, tokenizer: Tokenizer,
        settings: Settings) -> None:
    chat, summaries = build(store, recording, tokenizer, settings, summary=False)
    await thread(store, KEY, 300)
    final = await ask(chat, KEY, "質問です", "q1")
    assert final.endswith(window_notice(300 - turns_read(recording.answers()[0]), False))
    await ask(chat, KEY, "次です", "q2")
    assert recording.summaries() == []


async def test_a_short_conversation_has_no_notice_and_no_summary(
        store: HistoryStore, recording: Recording, tokenizer: Tokenizer,
        settings: Settings) -> None:
    chat, summaries = build(store, recording, tokenizer, settings)
    assert summaries is not None
    await thread(store, KEY, 10)
    final = await ask(chat, KEY, "質問です", "q1")
    await summaries.idle()
    assert "古いメッセージ" not in final and recording.summaries() == []


async def test_a_1000_message_thread_is_summarised_in_a_bounded_number_of_calls(
        recording: Recording, tokenizer: Tokenizer, settings: Settings) -> None:
    summariser = Summariser(recording, tokenizer, settings.context_tokens, SEEDED)
    turns = [Turn(Speaker.USER if i % 2 == 0 else Speaker.SYSTEM, f"猫{i}")
             for i in range(1000)]
    written = await summariser.write(turns, background=False)
    assert written is not None and written.text
    prompts = recording.answers()
    assert 1 < written.calls == len(prompts) <= MAX_CALLS
    assert written.read == 1000  # every message was read, in chunks
    assert all(len(tokenizer.encode(p)) + SEEDED.max_new_tokens <= settings.context_tokens
               for p in prompts)  # each chunk fits the window
    assert ": 猫0<NL>" in prompts[0] and ": 猫999<NL>" in prompts[-1]
    for later in prompts[1:]:  # each later chunk carries the summary so far
        assert later.startswith("ユーザー: 次の「これまでの要約」")


async def test_too_long_a_thread_is_capped_at_the_newest_messages(
        recording: Recording, tokenizer: Tokenizer, settings: Settings) -> None:
    summariser = Summariser(recording, tokenizer, settings.context_tokens, SEEDED, max_calls=2)
    turns = [Turn(Speaker.USER, f"メッセージ{i}：今日の猫の話") for i in range(1000)]
    written = await summariser.write(turns, background=False)
    assert written is not None and written.calls == 2 and 0 < written.read < 1000
    assert "メッセージ999：" in recording.answers()[-1]
    assert not any("メッセージ0：" in p for p in recording.answers())


class ThreadNoting(Tokenizer):
    """A tokenizer that notes the threads its counts run on."""

    def __init__(self, base: Tokenizer) -> None:
        super().__init__(base._sp)
        self.threads: set[int] = set()

    def count(self, text: str) -> int:
        self.threads.add(threading.get_ident())
        return super().count(text)


async def test_a_long_thread_is_tokenized_off_the_event_loop(
        tokenizer: Tokenizer, settings: Settings) -> None:
    noting = ThreadNoting(tokenizer)
    generator = ScriptedGenerator(default="要約です")
    summariser = Summariser(generator, noting, settings.context_tokens, SEEDED)
    turns = [Turn(Speaker.USER if i % 2 == 0 else Speaker.SYSTEM, f"猫{i}")
             for i in range(1000)]
    written = await summariser.write(turns, background=False)
    assert written is not None and written.read == 1000
    assert noting.threads and threading.get_ident() not in noting.threads
