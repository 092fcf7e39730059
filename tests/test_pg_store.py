"""PostgreSQL's own side of the store (the shared behaviour is in test_storage.py, run on both
engines): migrations under an advisory lock, a newer schema refused, the DSN's password never
shown, the server down at start (exit 1 through the real entry point), and the server
stopped and started again while the store is open: calls wait for it, the pool reconnects by
itself, nothing committed is lost."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from bot.conversation import ConversationKey, IncomingMessage
from bot.core.chat import ChatConfig, ChatService
from bot.engine.tokenizer import Tokenizer
from bot.errors import StorageError, StoreBusy, StoreUnreachable
from bot.ports.records import DeliveryState
from storage.pg_wire import redact
from storage.postgres import WRITE_LOCK, PostgresStore, Reconnect
from storage.schema import SCHEMA_VERSION
from tests.fakes import RecordingSink, ScriptedGenerator
from tests.pg.fixtures import Cluster
from tests.store_setup import take_on

ROOT = Path(__file__).resolve().parent.parent
KEY = ConversationKey("slack", "T1", "C1", "100.000001")


def closed_port() -> int:
    with socket.socket() as probe:  # nobody listens here once it is closed
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_redact_keeps_everything_but_the_password() -> None:
    assert redact("postgresql://rinna:pa%40ss@db:5432/rinna?sslmode=require") == \
        "postgresql://rinna:***@db:5432/rinna?sslmode=require"
    assert redact("postgresql://db/rinna?user=r&password=hunter2") == \
        "postgresql://db/rinna?user=r&password=***"
    assert redact("postgresql://rinna@db/rinna") == "postgresql://rinna@db/rinna"


async def test_replicas_starting_together_migrate_once(pg_dsn: str) -> None:
    stores = await asyncio.gather(*[PostgresStore.open(pg_dsn, pool_size=2) for _ in range(4)])
    try:
        assert {await store.schema_version() for store in stores} == {SCHEMA_VERSION}
        connection = await asyncpg.connect(pg_dsn)
        try:
            assert await connection.fetchval("SELECT count(*) FROM rinna_schema") == 1
        finally:
            await connection.close()
        assert (await stores[0].server_version()).startswith("15")
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused_and_left_alone(pg_dsn: str) -> None:
    store = await PostgresStore.open(pg_dsn)
    claim = await take_on(store, KEY, "m1")
    assert claim is not None
    await store.close()
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute("UPDATE rinna_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await connection.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await PostgresStore.open(pg_dsn)
    connection = await asyncpg.connect(pg_dsn)
    try:
        assert await connection.fetchval("SELECT version FROM rinna_schema") == \
            SCHEMA_VERSION + 1
        assert await connection.fetchval("SELECT count(*) FROM deliveries") == 1
    finally:
        await connection.close()


async def test_the_password_is_in_no_error_and_no_repr(pg_cluster: Cluster, pg_dsn: str) -> None:
    password = pg_cluster.dsn.split(":")[2].split("@")[0]
    store = await PostgresStore.open(pg_dsn)
    try:
        assert password not in repr(store) and password not in store.dsn
        assert "127.0.0.1" in repr(store)
    finally:
        await store.close()
    wrong = pg_dsn.replace(f":{password}@", ":not-the-password-4111@")
    with pytest.raises(StorageError) as refused:
        await PostgresStore.open(wrong)
    assert "not-the-password-4111" not in str(refused.value)
    assert "password authentication failed" in str(refused.value)
    away = f"postgresql://rinna:{password}@127.0.0.1:{closed_port()}/rinna"
    with pytest.raises(StoreUnreachable) as unreachable:
        await PostgresStore.open(away)
    assert password not in str(unreachable.value)
    assert str(unreachable.value).startswith("DATABASE_URL=postgresql://rinna:***@127.0.0.1:")


def test_postgresql_down_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Through the real entry point: `rinna-bot run` with DATABASE_URL at a server that is not
    there ends before any model load with one line naming the URL without its password."""
    from tests.test_startup import DISCORD_TOKEN, closed_port_url, environment

    url = f"postgresql://rinna:s3cret-pw-77@127.0.0.1:{closed_port()}/rinna"
    env = environment(tmp_path, DISCORD_TOKEN=DISCORD_TOKEN, DATABASE_URL=url,
                      FAKE_DISCORD_URL=closed_port_url().replace("/api/", "/api/v10"))
    done = subprocess.run([sys.executable, "-m", "tests.slow_start", "run"], cwd=tmp_path,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("rinna-bot: DATABASE_URL=postgresql://rinna:***@127.0.0.1:"), last
    assert "cannot reach PostgreSQL" in last
    assert "s3cret-pw-77" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "load-started").exists()  # stopped before any model load


# ----- the server stopped and started again while the store is open --------------------------
class Waits:
    """`Reconnect.on_wait`: counts the store's tries while the server is away."""

    def __init__(self) -> None:
        self.seen = asyncio.Event()
        self.count = 0

    def __call__(self, error: BaseException) -> None:
        self.count += 1
        self.seen.set()


async def _restart_when(cluster: Cluster, waiting: asyncio.Event) -> None:
    await waiting.wait()
    await asyncio.to_thread(cluster.pg_ctl, "start")


async def test_a_message_arriving_while_the_server_restarts_waits_and_is_answered(
        pg_cluster: Cluster, pg_dsn: str, tokenizer: Tokenizer) -> None:
    waits = Waits()
    store = await PostgresStore.open(pg_dsn, reconnect=Reconnect(wait_s=60, on_wait=waits))
    chat = ChatService(store, ScriptedGenerator(["戻りました。"]), tokenizer,
                       ChatConfig(stream_interval_s=0.0))
    try:
        first = RecordingSink()
        await chat.handle(KEY, IncomingMessage("一つ目", "m1", author="U1"), first)
        assert first.kinds()[-1] == "finish", first.events
        await asyncio.to_thread(pg_cluster.pg_ctl, "stop")
        try:
            sink = RecordingSink()
            answering = asyncio.create_task(
                chat.handle(KEY, IncomingMessage("二つ目", "m2", author="U1"), sink))
            await _restart_when(pg_cluster, waits.seen)
        finally:
            if waits.count == 0:  # never waited: start it again for the other tests
                await asyncio.to_thread(pg_cluster.pg_ctl, "start")
        await asyncio.wait_for(answering, 60)
        assert sink.kinds()[-1] == "finish", sink.events  # answered, not refused
        done = await store.delivery("slack", "m2")
        assert done is not None and done.state is DeliveryState.ANSWERED
        conversation = await store.find(KEY)
        assert conversation is not None
        texts = [t.turn.text for t in reversed(await store.recent_turns(conversation, 10))]
        assert texts.count("二つ目") == 1 and texts[0] == "一つ目"  # nothing lost, once
    finally:
        await store.close()


async def test_past_the_wait_a_message_gets_the_busy_notice_and_the_pool_comes_back(
        pg_cluster: Cluster, pg_dsn: str, tokenizer: Tokenizer) -> None:
    waits = Waits()
    store = await PostgresStore.open(pg_dsn, reconnect=Reconnect(wait_s=0.3, on_wait=waits))
    chat = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0.0))
    try:
        accepted = await store.accept(KEY, "kept", "停止前に受け付けた", "U1")
        assert accepted is not None
        await asyncio.to_thread(pg_cluster.pg_ctl, "stop")
        try:
            sink = RecordingSink()
            await chat.handle(KEY, IncomingMessage("止まっている間", "m-down", author="U1"), sink)
        finally:
            await asyncio.to_thread(pg_cluster.pg_ctl, "start")
        assert sink.events[-1] == ("fail", StoreUnreachable.user_message)
        assert waits.count >= 1
        # the same store, same pool: it reconnects by itself; what was accepted is there
        kept = await store.delivery("slack", "kept")
        assert kept is not None and kept.state is DeliveryState.ACCEPTED
        assert kept.text == "停止前に受け付けた"
        assert await store.delivery("slack", "m-down") is None  # told to retry: not half-kept
        again = RecordingSink()
        await chat.handle(KEY, IncomingMessage("止まっている間", "m-down", author="U1"), again)
        assert again.kinds()[-1] == "finish", again.events
    finally:
        await store.close()


def test_the_password_never_reaches_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    """DATABASE_URL is a secret setting: the URL and its password alone are redacted from
    every log record, and so is a password in any URL a library's error might print."""
    import logging

    from bot.config import load_settings
    from bot.service.logs import RedactSecrets

    settings = load_settings(database_url="postgresql://rinna:p%40ss-4111@db:5432/rinna")
    assert "p@ss-4111" in settings.secret_values()  # its password alone, decoded too
    assert "p%40ss-4111" not in repr(settings) and "p@ss-4111" not in repr(settings)
    handler = logging.StreamHandler()
    handler.addFilter(RedactSecrets(settings.secret_values()))
    logger = logging.getLogger("test.pg.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        logger.warning("connecting to %s", settings.database_url.get_secret_value())
        logger.warning("auth failed for password p@ss-4111")
        logger.warning("another url postgresql://other:hunter2@db2/x")
    finally:
        logger.handlers.clear()
    err = capsys.readouterr().err
    assert "p%40ss-4111" not in err and "p@ss-4111" not in err and "hunter2" not in err
    assert "postgresql://other:***@db2/x" in err


async def test_two_replicas_racing_for_one_regeneration_let_only_one_win(pg_dsn: str) -> None:
    """Write transactions are serialised across processes (the advisory write lock), so a
    read-then-write like 「もう一度」's "nothing is being answered" holds across replicas:
    two replicas taking on two presses of the same answer at the same moment record one."""
    first, second = (await PostgresStore.open(pg_dsn, pool_size=2),
                     await PostgresStore.open(pg_dsn, pool_size=2))
    try:
        for round_ in range(15):
            accepted = await first.accept(KEY, f"q{round_}", "質問", "U1")
            assert accepted is not None
            taken = await first.take(accepted, "r")
            assert taken is not None
            answering = await first.begin_answer(taken)
            assert answering is not None
            assert await first.store_answer(answering, "答え", "答え")
            assert await first.finish(answering)
            answer = await first.delivery("slack", f"q{round_}")
            assert answer is not None
            won = await asyncio.gather(first.accept_regenerate(answer, f"press-a{round_}"),
                                       second.accept_regenerate(answer, f"press-b{round_}"))
            assert sum(result is not None for result in won) == 1, (round_, won)
            winner = next(result for result in won if result is not None)
            assert await first.finish(winner, failed=True)  # done: the next round may redo
    finally:
        await first.close()
        await second.close()


def test_a_database_url_that_is_not_postgresql_is_refused_in_one_line() -> None:
    from bot.config import load_settings
    from bot.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_settings(database_url="mysql://rinna:hunter2@db/rinna")
    assert "DATABASE_URL" in str(refused.value) and "postgresql://" in str(refused.value)
    assert "hunter2" not in str(refused.value) and "\n" not in str(refused.value)


async def test_a_settings_change_on_one_replica_reaches_the_others_listeners(
        pg_dsn: str) -> None:
    from bot.ports.community import Scope

    here, there = await PostgresStore.open(pg_dsn), await PostgresStore.open(pg_dsn)
    heard: asyncio.Queue[Scope] = asyncio.Queue()
    try:
        there.on_change(heard.put_nowait)
        await asyncio.wait_for(there._notices.listening.wait(), 10)
        scope = Scope("discord", "G1", "C1")
        assert await here.change_settings(scope, {"persona": "丁寧"}, "U1")
        assert await asyncio.wait_for(heard.get(), 10) == scope
    finally:
        await here.close()
        await there.close()


async def test_a_listening_store_with_a_pool_of_one_still_serves_its_calls(
        pg_dsn: str) -> None:
    """The settings LISTEN holds a connection of its own, not the pool's only one."""
    from bot.ports.community import Scope

    store = await PostgresStore.open(pg_dsn, pool_size=1, reconnect=Reconnect(wait_s=1.0))
    other = await PostgresStore.open(pg_dsn)
    heard: asyncio.Queue[Scope] = asyncio.Queue()
    try:
        store.on_change(heard.put_nowait)
        await asyncio.wait_for(store._notices.listening.wait(), 10)
        accepted = await store.accept(KEY, "pool-1", "一つだけの接続で", "U1")
        assert accepted is not None  # the pool's one connection is free for the store
        scope = Scope("slack", "T1", "C1")
        assert await other.change_settings(scope, {"persona": "丁寧"}, "U2")
        assert await asyncio.wait_for(heard.get(), 10) == scope
    finally:
        await other.close()
        await store.close()


class RetriesAfter:
    """`Reconnect.on_wait` of a store that only listens: `passed` is set at the first failed
    attempt made once `after()` (a point in time) has passed."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.wait_s = 0.0
        self.passed = asyncio.Event()

    def __call__(self, error: BaseException) -> None:
        loop_time = asyncio.get_running_loop().time()
        if self.since is not None and loop_time > self.since + self.wait_s:
            self.passed.set()


async def test_the_settings_listener_outlives_an_outage_longer_than_the_wait(
        pg_cluster: Cluster, pg_dsn: str) -> None:
    """Stopped for longer than `Reconnect.wait_s`, the server is back: a change made after
    that on another replica still reaches this one's listeners (it never stops trying)."""
    from bot.ports.community import Scope

    retries = RetriesAfter()
    retries.wait_s = 0.3
    store = await PostgresStore.open(pg_dsn, reconnect=Reconnect(wait_s=0.3, on_wait=retries))
    heard: asyncio.Queue[Scope] = asyncio.Queue()
    try:
        store.on_change(heard.put_nowait)
        await asyncio.wait_for(store._notices.listening.wait(), 10)
        await asyncio.to_thread(pg_cluster.pg_ctl, "stop")
        try:
            retries.since = asyncio.get_running_loop().time()
            await asyncio.wait_for(retries.passed.wait(), 30)  # still trying past wait_s
        finally:
            await asyncio.to_thread(pg_cluster.pg_ctl, "start")
        await asyncio.wait_for(store._notices.listening.wait(), 30)
        other = await PostgresStore.open(pg_dsn)
        try:
            scope = Scope("discord", "G9", "C9")
            assert await other.change_settings(scope, {"persona": "元気"}, "U1")
            assert await asyncio.wait_for(heard.get(), 10) == scope
        finally:
            await other.close()
    finally:
        await store.close()


async def test_a_busy_pool_is_told_apart_from_an_unreachable_server(pg_dsn: str) -> None:
    """Every pooled connection in use for the whole wait: StoreBusy naming the pool (the same
    notice to people), within the wait: the try is bounded by the time left, not by the
    10 s connect timeout."""
    store = await PostgresStore.open(pg_dsn, pool_size=1, reconnect=Reconnect(wait_s=0.3))
    try:
        async with store._connection():  # another call holds the pool's one connection
            with pytest.raises(StoreBusy, match="DATABASE_POOL_SIZE") as busy:
                await asyncio.wait_for(store.delivery("slack", "m1"), 5)
        assert busy.value.user_message == StoreUnreachable.user_message
        assert await store.delivery("slack", "m1") is None  # free again: served
    finally:
        await store.close()


async def _queued_for(holder: asyncpg.Connection) -> None:
    """Until some session waits for an advisory lock (polls the server's lock table)."""
    while not await holder.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
        await asyncio.sleep(0.01)  # the condition is the server's: nothing to wake us


async def test_a_write_cancelled_while_queued_for_the_lock_leaves_nothing_behind(
        pg_dsn: str) -> None:
    store = await PostgresStore.open(pg_dsn, pool_size=1)
    holder = await asyncpg.connect(pg_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)  # another replica
        writing = asyncio.create_task(store.accept(KEY, "queued", "順番待ち", "U1"))
        await asyncio.wait_for(_queued_for(holder), 10)
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
        await holder.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)
        assert await store.accept(KEY, "after", "その後", "U1") is not None
        assert await store.delivery("slack", "queued") is None
        assert not await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'")
    finally:
        await holder.close()
        await store.close()
