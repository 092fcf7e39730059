"""Two chat services as two replicas would run them: each its own runner token and its own
shared parts on the real throwaway PostgreSQL (leases, advisory locks, LISTEN/NOTIFY, person
slots), over one store. What a replica does when another writes, dies, or is pressed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot.conversation import Attachment, ConversationKey, IncomingMessage, Speaker
from bot.core.chat import ChatConfig, ChatService, Outcome
from bot.core.controls import STOPPED_MARK, ControlResult
from bot.core.counted import CountedGenerator
from bot.engine.tokenizer import Tokenizer
from bot.errors import UserBusyError
from storage.history import HistoryStore
from storage.pg_replicas import PgReplicas, open_pg_replicas
from tests.fakes import ScriptedGenerator
from tests.test_controls import KEY, ButtonSink, HeldGenerator, ask, history
from tests.test_pg_replicas import until

LEASE_S = 0.6  # short, so a dead replica's lease runs out within the test


@pytest.fixture
async def shared(pg_dsn: str) -> AsyncIterator[Callable[..., Awaitable[PgReplicas]]]:
    opened: list[PgReplicas] = []

    async def open_one(max_per_user: int = 2) -> PgReplicas:
        parts = await open_pg_replicas(pg_dsn, lease_s=LEASE_S, max_per_user=max_per_user)
        opened.append(parts)
        return parts

    yield open_one
    for parts in opened:
        await parts.aclose()


def replica(store: HistoryStore, tokenizer: Tokenizer, generator: object,
            parts: PgReplicas) -> ChatService:
    served = CountedGenerator(generator, parts.replicas.counts)
    return ChatService(store, served, tokenizer,  # type: ignore[arg-type]
                       ChatConfig(prompt_budget=1920, stream_interval_s=0.0),
                       locks=parts.locks, replicas=parts.replicas)


async def test_a_retry_on_another_replica_is_not_answered_again_and_its_stop_reaches_the_writer(
        store: HistoryStore, tokenizer: Tokenizer,
        shared: Callable[..., Awaitable[PgReplicas]]) -> None:
    held = HeldGenerator()
    other = ScriptedGenerator()
    a = replica(store, tokenizer, held, await shared())
    b = replica(store, tokenizer, other, await shared())
    sink = ButtonSink()
    answering = asyncio.create_task(a.handle(KEY, ask("長い話をして", "m1"), sink))
    await sink.updated.wait()
    # Slack retries the event to replica B while A writes: B leaves it to A.
    retry = ButtonSink()
    assert await b.handle(KEY, ask("長い話をして", "m1"), retry) is Outcome.DUPLICATE
    assert retry.events == [] and other.prompts == []
    # 「停止」 pressed on B stops the answer A writes.
    assert await b.stop("test", sink.ref, "alice") is ControlResult.DONE
    assert await asyncio.wait_for(answering, timeout=20) is Outcome.ANSWERED
    assert held.aborted.is_set()
    assert sink.final() == f"途中まで書いた\n\n{STOPPED_MARK}"
    assert await history(store) == [(Speaker.USER, "長い話をして"),
                                     (Speaker.SYSTEM, "途中まで書いた")]
    # Once done, the press finds nothing running anywhere.
    assert await b.stop("test", sink.ref, "alice") is ControlResult.NOT_RUNNING


async def test_a_dead_replicas_answer_is_taken_over_once_its_lease_runs_out(
        store: HistoryStore, tokenizer: Tokenizer,
        shared: Callable[..., Awaitable[PgReplicas]]) -> None:
    dead_parts, survivor_parts = await shared(), await shared()
    generator = ScriptedGenerator()
    survivor = replica(store, tokenizer, generator, survivor_parts)
    # Replica "dead" took the message on, posted its placeholder, and was killed: its lease
    # stays behind unrenewed, the record claimed by its runner.
    delivery = await store.accept(KEY, "m2", "富士山の高さは?", "alice")
    assert delivery is not None
    assert await dead_parts.replicas.leases.claim(("test", "m2"), "dead-runner")
    taken = await store.take(delivery, "dead-runner")
    assert taken is not None and await store.show_placeholder(taken, "msg-dead")
    await dead_parts.aclose()
    sinks: list[ButtonSink] = []

    def make_sink(_: object) -> ButtonSink:
        sinks.append(ButtonSink())
        return sinks[-1]

    # While the lease holds, the survivor's sweep leaves it alone.
    assert (await survivor.recover("test", make_sink)).answered == 0
    assert sinks == [] and generator.prompts == []
    async def taken_over() -> int:
        return (await survivor.recover("test", make_sink)).answered

    assert await until(taken_over) == 1 and len(sinks) == 1
    assert sinks[0].kinds()[-1] == "finish"
    assert [speaker for speaker, _ in await history(store)] == [Speaker.USER, Speaker.SYSTEM]
    assert (await survivor.recover("test", make_sink)).answered == 0  # never twice
    assert len(generator.prompts) == 1


async def test_max_per_user_holds_across_replicas(
        store: HistoryStore, tokenizer: Tokenizer,
        shared: Callable[..., Awaitable[PgReplicas]]) -> None:
    held = HeldGenerator()
    a = replica(store, tokenizer, held, await shared(max_per_user=1))
    b = replica(store, tokenizer, ScriptedGenerator(), await shared(max_per_user=1))
    sink = ButtonSink()
    answering = asyncio.create_task(a.handle(KEY, ask("長い話をして", "m1"), sink))
    await sink.updated.wait()
    elsewhere = ConversationKey("test", "w", "c", "another-thread")
    refused = ButtonSink()
    try:
        assert await b.handle(elsewhere, ask("もう一つ", "m3"), refused) is Outcome.FAILED
        assert refused.final() == UserBusyError.user_message
    finally:
        held.release.set()
        assert await asyncio.wait_for(answering, timeout=20) is Outcome.ANSWERED
    again = ButtonSink()
    assert await b.handle(elsewhere, ask("もう一つ", "m4"), again) is Outcome.ANSWERED


async def test_a_message_whose_files_are_being_read_is_not_taken_over(
        store: HistoryStore, tokenizer: Tokenizer,
        shared: Callable[..., Awaitable[PgReplicas]]) -> None:
    """Its lease is claimed right after it is taken on, before its files are downloaded: a
    slow download past LEASE_S is not mistaken for a dead replica's leftover by another
    replica's sweep (which would answer it without the files)."""
    reading_parts, sweeping_parts = await shared(), await shared()
    writer = ScriptedGenerator()
    reading = replica(store, tokenizer, writer, reading_parts)
    other = ScriptedGenerator()
    sweeping = replica(store, tokenizer, other, sweeping_parts)
    fetching, release = asyncio.Event(), asyncio.Event()

    class SlowFiles:
        async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
            fetching.set()
            await release.wait()
            return "ファイルの中身".encode()

    message = IncomingMessage("読んで", "m4", "alice", files=SlowFiles(), attachments=(
        Attachment("a.txt", "https://files.example/a.txt", 30, "text/plain"),))
    answering = asyncio.create_task(reading.handle(KEY, message, ButtonSink()))
    await fetching.wait()
    clock = sweeping_parts.replicas.leases.clock
    started = await clock()
    recovered = 0

    async def leases_later() -> bool:  # sweeping all along, until three leases have passed
        nonlocal recovered
        recovered += (await sweeping.recover("test", lambda _: ButtonSink())).answered
        return await clock() > started + 3 * LEASE_S

    await until(leases_later)
    assert recovered == 0 and other.prompts == []
    release.set()
    assert await asyncio.wait_for(answering, timeout=20) is Outcome.ANSWERED
    assert "ファイルの中身" in writer.prompts[0]


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0])
async def test_settled_is_judged_by_the_servers_clock_not_the_accepting_hosts(
        tmp_path: Path, tokenizer: Tokenizer, shared: Callable[..., Awaitable[PgReplicas]],
        skew_s: float) -> None:
    """The message was taken on by a host whose clock is an hour off. Behind: the sweep right
    after must not take it (that host is about to lease it); ahead: it is not left forever.
    Either way it is taken over once unleased for a lease by the server's clock."""
    store = await HistoryStore.open(tmp_path / "skewed.db", clock=lambda: time.time() + skew_s)
    try:
        generator = ScriptedGenerator()
        sweeping = replica(store, tokenizer, generator, await shared())
        assert await store.accept(KEY, "m5", "富士山の高さは?", "alice") is not None

        async def swept() -> int:
            return (await sweeping.recover("test", lambda _: ButtonSink(),
                                           max_age_s=86400.0)).answered

        assert await swept() == 0 and generator.prompts == []
        assert await until(swept) == 1
        assert len(generator.prompts) == 1
    finally:
        await store.close()
