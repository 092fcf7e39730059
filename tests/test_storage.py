"""The history store: real files, reopened, written concurrently, deduplicated, reset.

The behavioural tests run against every store implementation listed in `IMPLEMENTATIONS`
(SQLite today): a new database adds one line there and inherits them. Tests of SQLite's own
files (WAL, schema versions, migrations) open `HistoryStore` directly."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.conversation import ConversationKey, Speaker, Turn
from bot.errors import StorageError
from bot.ports.records import DeliveryState
from storage.history import HistoryStore
from storage.schema import SCHEMA_VERSION
from tests.store_setup import add_turn, take_on

KEY = ConversationKey("discord", "guild", "channel", "thread")

Opener = Callable[..., Awaitable[HistoryStore]]  # (path, clock=...)
# Every implementation of the store ports (a new one: one line here and in `open_store`).
IMPLEMENTATIONS = ("sqlite", "postgresql")


@pytest.fixture(params=IMPLEMENTATIONS)
async def open_store(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Opens the store of each engine at a path: SQLite's file, or for PostgreSQL a database
    of its own per path on the test cluster (the same path reopens the same database; each
    dropped at the end of the test)."""
    if request.param == "sqlite":
        yield HistoryStore.open
        return
    from storage.postgres import PostgresStore
    from tests.pg.fixtures import create_database, drop_database

    cluster = request.getfixturevalue("pg_cluster")
    databases: dict[Path, str] = {}

    async def open_postgres(path: Path, **options: Any) -> PostgresStore:
        if path not in databases:
            databases[path] = await create_database(cluster.dsn)
        return await PostgresStore.open(databases[path], pool_size=4, **options)

    yield open_postgres  # type: ignore[misc]
    for dsn in databases.values():
        await drop_database(cluster.dsn, dsn)


@pytest.fixture
async def store(open_store: Opener, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    opened = await open_store(tmp_path / "store.sqlite3")
    yield opened
    await opened.close()


async def _texts(store: HistoryStore, conversation: int) -> list[str]:
    return [t.turn.text for t in reversed(await store.recent_turns(conversation, 1000))]


async def test_turns_survive_a_reopen(open_store: Opener, tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    store = await open_store(path)
    claim = await take_on(store, KEY, "m1")
    assert claim is not None and claim.stored_turn is None
    conversation = claim.conversation
    await add_turn(store, conversation, Turn(Speaker.USER, "こんにちは\n二行目"), ("discord", "m1"))
    await add_turn(store, conversation, Turn(Speaker.SYSTEM, "こんにちは!"))
    await store.close()

    reopened = await open_store(path)
    assert await reopened.find(KEY) == conversation
    turns = list(reversed(await reopened.recent_turns(conversation, 10)))
    assert [(t.turn.speaker, t.turn.text) for t in turns] == [
        (Speaker.USER, "こんにちは\n二行目"), (Speaker.SYSTEM, "こんにちは!")]
    assert await take_on(reopened, KEY, "m1") is None  # redelivery after a restart: not again
    await reopened.close()


async def _count(store: HistoryStore, table: str) -> int:
    row = await (await store._db.execute(f"SELECT COUNT(*) FROM {table}")).fetchone()
    return int(row[0])


async def test_database_uses_wal_foreign_keys_and_a_schema_version(tmp_path: Path) -> None:
    store = await HistoryStore.open(tmp_path / "wal.sqlite3")
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with pytest.raises(sqlite3.IntegrityError):
        await add_turn(store, 999, Turn(Speaker.USER, "no such conversation"))
    assert await store.find(KEY) is None  # the failed transaction left nothing behind
    await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="DATABASE_PATH"):
        await HistoryStore.open(path)


async def test_unwritable_path_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="DATABASE_PATH"):
        await HistoryStore.open(blocker / "sub" / "h.sqlite3")


async def test_the_same_delivery_is_claimed_once_even_concurrently(store: HistoryStore) -> None:
    results = await asyncio.gather(*[take_on(store, KEY, "same") for _ in range(20)])
    assert sum(r is not None for r in results) == 1
    other = ConversationKey("slack", "T", "C", "1.0")
    assert await take_on(store, other, "same") is not None  # keys are per platform


async def test_concurrent_writers_on_one_file(open_store: Opener, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    first, second = await open_store(path), await open_store(path)
    claim = await take_on(first, KEY, "start")
    assert claim is not None
    conversation = claim.conversation

    async def write(store: HistoryStore, prefix: str) -> None:
        for i in range(50):
            await add_turn(store, conversation, Turn(Speaker.USER, f"{prefix}{i}"))

    await asyncio.gather(write(first, "a"), write(second, "b"), write(first, "c"))
    texts = await _texts(first, conversation)
    assert sorted(texts) == sorted([f"{p}{i}" for p in "abc" for i in range(50)])
    for prefix in "abc":  # each writer's turns keep their order
        mine = [t for t in texts if t[0] == prefix]
        assert mine == [f"{prefix}{i}" for i in range(50)]
    await first.close()
    await second.close()


async def test_reset_keeps_old_rows_out_of_the_history(store: HistoryStore) -> None:
    claim = await take_on(store, KEY, "m1")
    assert claim is not None
    conversation = claim.conversation
    await add_turn(store, conversation, Turn(Speaker.USER, "古い"))
    await store.reset(KEY)
    await add_turn(store, conversation, Turn(Speaker.USER, "新しい"))
    assert await _texts(store, conversation) == ["新しい"]
    assert await _count(store, "turns") == 2


async def test_recent_turns_pages_backwards(store: HistoryStore) -> None:
    claim = await take_on(store, KEY, "m")
    assert claim is not None
    conversation = claim.conversation
    for i in range(10):
        await add_turn(store, conversation, Turn(Speaker.USER, str(i)))
    page = await store.recent_turns(conversation, 4)
    older = await store.recent_turns(conversation, 4, before=page[-1].id)
    assert [t.turn.text for t in page + older] == ["9", "8", "7", "6", "5", "4", "3", "2"]


async def test_reset_of_a_conversation_the_bot_is_not_in_creates_nothing(
        store: HistoryStore) -> None:
    await store.reset(KEY)
    assert await store.find(KEY) is None


async def test_import_skips_messages_already_seen(store: HistoryStore) -> None:
    turns = [(Turn(Speaker.USER, "一"), "1"), (Turn(Speaker.SYSTEM, "二"), "2"),
             (Turn(Speaker.USER, "三"), None)]
    assert await store.import_turns(KEY, turns) == 3
    assert await store.import_turns(KEY, turns[:2]) == 0
    conversation = await store.find(KEY)
    assert conversation is not None
    assert await _texts(store, conversation) == ["一", "二", "三"]
    # "1" was read in as history before its own event arrived: that event is answered, once,
    # without storing its text again
    claim = await take_on(store, KEY, "1")
    assert claim is not None and claim.conversation == conversation
    assert claim.stored_turn is not None
    assert await take_on(store, KEY, "1") is None


async def test_a_version_one_database_is_migrated_in_place(tmp_path: Path) -> None:
    from storage.schema import MIGRATIONS

    path = tmp_path / "v1.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.executescript(MIGRATIONS[0])
        raw.execute("INSERT INTO conversations VALUES (1, 'slack', 'T', 'C', '1.0', 0, 0)")
        raw.execute("INSERT INTO deliveries VALUES ('slack', 'C:1.0', 1, NULL, 0)")
        raw.execute("PRAGMA user_version = 1")
    store = await HistoryStore.open(path)
    try:
        assert await take_on(store, ConversationKey("slack", "T", "C", "1.0"), "C:1.0") is None
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert raw.execute("SELECT imported, state FROM deliveries").fetchone() == (
                0, "answered")
    finally:
        await store.close()


async def test_a_write_cancelled_mid_transaction_leaves_the_store_usable(
        store: HistoryStore) -> None:
    for _ in range(3):  # cancel at successive points inside the transaction
        task = asyncio.create_task(take_on(store, KEY, "cancelled"))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    claim = await take_on(store, KEY, "after")
    assert claim is not None
    await add_turn(store, claim.conversation, Turn(Speaker.USER, "まだ書ける"))
    assert await _texts(store, claim.conversation) == ["まだ書ける"]


async def test_a_version_two_database_keeps_answered_and_imported_messages_apart(
        tmp_path: Path) -> None:
    """Existing records carry forward: a message answered before the upgrade is not answered
    again; one read in as history is still answered once when its own event comes."""
    from storage.schema import MIGRATIONS

    path = tmp_path / "v2.sqlite3"
    key = ConversationKey("slack", "T", "C", "1.0")
    with sqlite3.connect(path) as raw:
        raw.executescript(MIGRATIONS[0])
        raw.executescript(MIGRATIONS[1])
        raw.execute("INSERT INTO conversations VALUES (1, 'slack', 'T', 'C', '1.0', 0, 0)")
        raw.execute("INSERT INTO turns VALUES (1, 1, 'ユーザー', '前の話', 0)")
        raw.execute("INSERT INTO deliveries VALUES ('slack', 'C:1.0', 1, NULL, 0, 0)")
        raw.execute("INSERT INTO deliveries VALUES ('slack', 'C:2.0', 1, 1, 0, 1)")
        raw.execute("PRAGMA user_version = 2")
    store = await HistoryStore.open(path)
    try:
        assert await store.accept(key, "C:1.0", "もう一度") is None
        imported = await store.accept(key, "C:2.0", "前の話")
        assert imported is not None and imported.turn_id == 1
        assert await store.unfinished("slack") == [imported]
        taken = await store.take(imported, "runner")
        assert taken is not None
        begun = await store.begin_answer(taken)
        assert begun is not None and begun.turn_id == 1  # not stored a second time
    finally:
        await store.close()


async def test_a_delivery_moves_through_its_states_and_survives_a_reopen(
        open_store: Opener, tmp_path: Path) -> None:
    path = tmp_path / "states.sqlite3"
    store = await open_store(path)
    accepted = await store.accept(KEY, "m1", "質問")
    assert accepted is not None and accepted.state is DeliveryState.ACCEPTED
    assert accepted.turn_id is None and accepted.reply_ref is None
    again = await store.accept(KEY, "m1", "質問")  # a redelivery before it was answered
    assert again == accepted
    await store.close()

    store = await open_store(path)  # a restart
    (pending,) = await store.unfinished("discord")
    assert pending.delivery_key == "m1" and pending.key == KEY
    taken = await store.take(pending, "second process")
    assert taken is not None and taken.runner == "second process"
    assert await store.show_placeholder(taken, "123/456")
    assert (await store.delivery("discord", "m1")).state is DeliveryState.SHOWN
    begun = await store.begin_answer(taken)
    assert begun is not None and begun.state is DeliveryState.ANSWERING
    again = await store.begin_answer(taken)  # answering again after a crash: the same turn
    assert again is not None and again.turn_id == begun.turn_id
    assert await store.store_answer(taken, "答え", "答え")
    current = await store.delivery("discord", "m1")
    assert current is not None and current.state is DeliveryState.READY
    assert (current.turn_id, current.reply_ref, current.final) == (begun.turn_id, "123/456",
                                                                   "答え")
    assert await store.finish(taken)
    assert (await store.delivery("discord", "m1")).state is DeliveryState.ANSWERED
    assert await store.unfinished("discord") == []
    assert await store.accept(KEY, "m1", "質問") is None  # done: never again
    assert await _texts(store, pending.conversation) == ["質問", "答え"]
    await store.close()


# ----- the delivery state machine: each transition checks where it comes from -----------------
async def _state_row(store: HistoryStore, key: str = "m1") -> tuple[object, ...]:
    """Everything a transition could change, to show that a lost one changed nothing."""
    current = await store.delivery("discord", key)
    assert current is not None
    return (current.state, current.turn_id, current.reply_ref, current.final, current.text,
            current.answer_id, current.runner, current.conversation)


async def test_take_lets_one_runner_answer_and_a_new_process_take_over(
        store: HistoryStore) -> None:
    accepted = await store.accept(KEY, "m1", "質問")
    assert accepted is not None and accepted.runner is None
    mine = await store.take(accepted, "A")
    assert mine is not None and mine.runner == "A"
    assert await store.take(accepted, "A") is None  # a redelivery while A answers it
    later = await store.take(accepted, "B")  # A's process died: the next one takes over
    assert later is not None and later.runner == "B"
    # A lost its claim: none of its transitions changes anything
    before = await _state_row(store)
    assert not await store.show_placeholder(mine, "1/2")
    assert await store.begin_answer(mine) is None
    assert not await store.store_answer(mine, "答え", "答え")
    assert not await store.finish(mine)
    assert await _state_row(store) == before
    assert await store.finish(later, failed=True)
    assert await store.take(accepted, "C") is None  # finished: nobody takes it again


async def test_a_transition_from_the_wrong_state_loses_and_changes_nothing(
        store: HistoryStore) -> None:
    accepted = await store.accept(KEY, "m1", "質問")
    assert accepted is not None
    taken = await store.take(accepted, "A")
    assert taken is not None
    before = await _state_row(store)
    assert not await store.store_answer(taken, "答え", "答え")  # accepted: no user turn yet
    assert await _state_row(store) == before
    assert await store.begin_answer(taken) is not None
    answering = await _state_row(store)
    other = ConversationKey("discord", "guild", "channel", "other")
    assert await store.relocate(taken, other) is None  # only an accepted message moves
    assert await _state_row(store) == answering
    assert await store.store_answer(taken, "答え", "答え")
    ready = await _state_row(store)
    assert await store.begin_answer(taken) is None  # ready: the answer is stored already
    assert not await store.store_answer(taken, "別の答え", "別の答え")
    assert not await store.show_placeholder(taken, "9/9")
    assert await _state_row(store) == ready
    assert await store.finish(taken)
    done = await _state_row(store)
    assert not await store.finish(taken) and not await store.finish(taken, failed=True)
    assert not await store.release(taken)
    assert await _state_row(store) == done and done[0] is DeliveryState.ANSWERED
    assert await _texts(store, taken.conversation) == ["質問", "答え"]


async def test_a_message_deleted_while_it_waits_is_withdrawn_then_ends_failed(
        store: HistoryStore) -> None:
    from bot.errors import MessageWithdrawn

    accepted = await store.accept(KEY, "m1", "ひみつ")
    assert accepted is not None
    taken = await store.take(accepted, "A")
    assert taken is not None and await store.show_placeholder(taken, "1/2")
    assert await store.delete_delivered("discord", "m1") == 1
    withdrawn = await store.delivery("discord", "m1")
    assert withdrawn is not None and withdrawn.state is DeliveryState.WITHDRAWN
    assert withdrawn.text is None
    with pytest.raises(MessageWithdrawn):
        await store.begin_answer(taken)
    assert await store.find(KEY) is not None and await _texts(store, taken.conversation) == []
    assert [d.delivery_key for d in await store.unfinished("discord")] == ["m1"]
    assert await store.finish(taken, failed=True)
    assert (await store.delivery("discord", "m1")).state is DeliveryState.FAILED
    assert await store.unfinished("discord") == []


async def test_released_delivery_can_be_taken_again_by_the_same_runner(
        store: HistoryStore) -> None:
    accepted = await store.accept(KEY, "m1", "質問")
    assert accepted is not None
    taken = await store.take(accepted, "A")
    assert taken is not None and await store.release(taken)
    again = await store.take(accepted, "A")
    assert again is not None and again.state is DeliveryState.ACCEPTED


async def test_begin_answer_imports_earlier_messages_only_into_an_empty_conversation(
        store: HistoryStore) -> None:
    earlier = [(Turn(Speaker.USER, "前の質問"), "e1", "U1"), (Turn(Speaker.SYSTEM, "前の答え"),
                                                          None)]
    first = await store.take(await store.accept(KEY, "m1", "一つ目"), "A")
    assert first is not None
    assert await store.begin_answer(first, earlier) is not None
    second = await store.take(await store.accept(KEY, "m2", "二つ目"), "A")
    assert second is not None
    assert await store.begin_answer(second, [(Turn(Speaker.USER, "もう入らない"), "e2")])
    assert await _texts(store, first.conversation) == ["前の質問", "前の答え", "一つ目", "二つ目"]
    assert (await store.delivery("discord", "e1")).state is DeliveryState.IMPORTED


@pytest.mark.parametrize("version", [6, 8])
async def test_older_deliveries_get_their_named_states(tmp_path: Path, version: int) -> None:
    """Migration 9: each old (state, columns) row lands in the state it was really in, and
    a ref unique only within its channel (a bare Slack ts) gets its channel in front. From
    version 6 (through 7 and 8 too) and from 8 (issues 27-29: community settings, summaries),
    whose own rows the state rebuild leaves as they were."""
    from bot.ports.community import Scope
    from bot.ports.records import Summary
    from storage.schema import MIGRATIONS

    path = tmp_path / f"v{version}.sqlite3"
    rows = {  # key: (old state, turn_id, reply_ref, final, withdrawn) -> new state
        "imported": ("imported", 1, None, None, 0, DeliveryState.IMPORTED),
        "accepted": ("accepted", None, None, None, 0, DeliveryState.ACCEPTED),
        "shown": ("answering", None, "1/2", None, 0, DeliveryState.SHOWN),
        "answering": ("answering", 1, "1/3", None, 0, DeliveryState.ANSWERING),
        "ready": ("answering", 1, "1/4", "答え", 0, DeliveryState.READY),
        "withdrawn": ("answering", None, "1/5", None, 1, DeliveryState.WITHDRAWN),
        "done": ("answered", 1, "1/6", None, 0, DeliveryState.ANSWERED),
        "bare ref": ("answered", 1, "1700.000001", None, 0, DeliveryState.ANSWERED),
    }
    with sqlite3.connect(path) as raw:
        for migration in MIGRATIONS[:version]:
            raw.executescript(migration)
        raw.execute("INSERT INTO conversations VALUES (1, 'discord', 'g', 'c', 't', 0, 0)")
        if version >= 8:
            raw.execute("INSERT INTO community_settings VALUES"
                        " ('discord', 'g', '', '', 'buttons', 'off', 0, 'U9')")
            raw.execute("INSERT INTO summaries VALUES (1, '前の話の要約', 1, 0, 0)")
            raw.execute("INSERT INTO summary_requests VALUES ('discord', 'ready')")
        raw.execute("INSERT INTO turns (id, conversation_id, speaker, text, created_at)"
                    " VALUES (1, 1, 'ユーザー', '前の話', 0)")
        for key, (state, turn, ref, final, withdrawn, _) in rows.items():
            raw.execute("INSERT INTO deliveries (platform, delivery_key, conversation_id, turn_id,"
                        " received_at, state, reply_ref, final, withdrawn)"
                        " VALUES ('discord', ?, 1, ?, 0, ?, ?, ?, ?)",
                        (key, turn, state, ref, final, withdrawn))
        raw.execute("INSERT INTO feedback VALUES ('discord', 'done', 'U1', 'good', 0)")
        raw.execute(f"PRAGMA user_version = {version}")
    store = await HistoryStore.open(path)
    try:
        for key, expected in rows.items():
            current = await store.delivery("discord", key)
            assert current is not None and current.state is expected[-1], key
        unfinished = {d.delivery_key for d in await store.unfinished("discord")}
        assert unfinished == {"accepted", "shown", "answering", "ready", "withdrawn"}
        assert await store.feedback_counts() == {"good": 1, "bad": 0}  # kept: no cascade
        assert (await store.answer_at("discord", "c/1700.000001")).delivery_key == "bare ref"
        assert (await store.answer_at("discord", "1/6")).delivery_key == "done"  # as it was
        if version >= 8:
            server = Scope("discord", "g")
            assert await store.scope_values([server]) == {server: {"buttons": "off"}}
            assert await store.summary(1) == Summary("前の話の要約", 1)
            assert await store.is_summary_request("discord", "ready")
    finally:
        await store.close()
