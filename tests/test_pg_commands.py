"""The operator's commands on PostgreSQL, as people run them (subprocesses): `migrate-db`
copies a SQLite history idempotently and checks the counts; `doctor` checks the connection,
server and schema versions; `forget` and `export` work on DATABASE_URL, `forget` VACUUMs what
it touched. The URL's password appears in no output."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg

from bot.conversation import ConversationKey, Speaker, Turn
from bot.ports.community import Scope
from storage.history import HistoryStore
from storage.postgres import PostgresStore
from storage.schema import SCHEMA_VERSION
from tests.pg.fixtures import Cluster, create_database
from tests.test_pg_store import closed_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "カード番号 4111 1111 1111 1111"
KEEP = "ボブの献立メモ 7777"
ALICE, BOB = "U0ALICE", "U0BOB"
KEY = ConversationKey("slack", "T1", "C1", "100.000001")
DM = ConversationKey("discord", "", "555")


def rinna_bot(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "METRICS_"))}
    clean.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=240, check=False)


def password_of(cluster: Cluster) -> str:
    return cluster.dsn.split(":")[2].split("@")[0]


async def fill(store: HistoryStore | PostgresStore) -> None:
    """Two people in a Slack thread and a Discord DM, an answer with votes, a setting."""
    for n, (key, delivery, text, author) in enumerate(((KEY, "C1:100.000001", SECRET, ALICE),
                                                       (KEY, "C1:100.000002", KEEP, BOB),
                                                       (DM, "9001", "DM の秘密 4111", ALICE))):
        accepted = await store.accept(key, delivery, text, author)
        assert accepted is not None
        taken = await store.take(accepted, "runner")
        assert taken is not None
        answering = await store.begin_answer(taken)
        assert answering is not None
        assert await store.store_answer(answering, f"承知しました{n}", f"承知しました{n}")
        assert await store.finish(answering)
    answered = await store.delivery("slack", "C1:100.000001")
    assert answered is not None
    await store.set_feedback(answered, ALICE, "bad")
    await store.set_feedback(answered, BOB, "good")
    await store.change_settings(Scope("slack", "T1", "C1"), {"persona": "丁寧"}, BOB)


async def test_migrate_db_copies_a_sqlite_history_once_and_checks_the_counts(
        pg_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    source = await HistoryStore.open(path)
    await fill(source)
    await source.close()

    first = rinna_bot("migrate-db", "--to", pg_dsn, cwd=tmp_path, DATABASE_PATH=str(path))
    assert first.returncode == 0, first.stderr
    lines = dict(line.split(": ", 1) for line in first.stdout.splitlines())
    assert lines["turns"] == "6 in SQLite, 6 copied now, 6 found in PostgreSQL"
    assert lines["deliveries"] == "3 in SQLite, 3 copied now, 3 found in PostgreSQL"
    assert lines["feedback"] == "2 in SQLite, 2 copied now, 2 found in PostgreSQL"
    assert lines["settings_audit"] == "1 in SQLite, 1 copied now, 1 found in PostgreSQL"
    assert "every row checked" in first.stderr
    again = rinna_bot("migrate-db", cwd=tmp_path, DATABASE_PATH=str(path), DATABASE_URL=pg_dsn)
    assert again.returncode == 0, again.stderr
    assert "6 in SQLite, 0 copied now, 6 found in PostgreSQL" in again.stdout  # idempotent
    password = password_of(pg_cluster)
    assert all(password not in done.stdout + done.stderr for done in (first, again))

    store = await PostgresStore.open(pg_dsn)
    try:
        conversation = await store.find(KEY)
        assert conversation is not None
        texts = [t.turn.text for t in reversed(await store.recent_turns(conversation, 10))]
        assert texts == [SECRET, "承知しました0", KEEP, "承知しました1"]
        assert await store.accept(KEY, "C1:100.000001", SECRET, ALICE) is None  # not again
        assert await store.feedback_counts("slack") == {"good": 1, "bad": 1}
        assert (await store.scope_values([Scope("slack", "T1", "C1")]))[
            Scope("slack", "T1", "C1")] == {"persona": "丁寧"}
        new = await store.accept(KEY, "C1:100.000003", "続き", BOB)  # ids go on after the copy
        assert new is not None
        taken = await store.take(new, "r")
        assert taken is not None
        answering = await store.begin_answer(taken)
        assert answering is not None and answering.turn_id is not None
        assert answering.turn_id > max(t.id for t in await store.recent_turns(conversation, 4)
                                       if t.id != answering.turn_id)
    finally:
        await store.close()


async def test_migrate_db_checks_whole_rows_and_leaves_out_columns_postgresql_lacks(
        pg_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    """A row an earlier copy wrote that has changed since in SQLite is kept as it was by
    ON CONFLICT DO NOTHING: the check compares whole rows, so it is reported, not hidden.
    SQLite's leftover `deliveries.imported` is not in a fresh PostgreSQL schema."""
    path = tmp_path / "bot.sqlite3"
    source = await HistoryStore.open(path)
    await fill(source)
    await source.close()
    first = rinna_bot("migrate-db", "--to", pg_dsn, cwd=tmp_path, DATABASE_PATH=str(path))
    assert first.returncode == 0, first.stderr
    connection = await asyncpg.connect(pg_dsn)
    try:
        assert not await connection.fetchval(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'deliveries' AND column_name = 'imported'")
    finally:
        await connection.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE turns SET text = '後から直した' WHERE text = ?", (KEEP,))
    again = rinna_bot("migrate-db", "--to", pg_dsn, cwd=tmp_path, DATABASE_PATH=str(path))
    assert again.returncode == 1, again.stderr
    lines = dict(line.split(": ", 1) for line in again.stdout.splitlines())
    assert lines["turns"] == "6 in SQLite, 0 copied now, 5 found in PostgreSQL"
    assert "rows missing or different in PostgreSQL after the copy: turns" in again.stderr


async def test_a_postgresql_error_during_the_copy_is_one_line_and_writes_nothing(
        pg_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    target = await PostgresStore.open(pg_dsn)  # the schema, then a table that refuses rows
    await target.close()
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'no votes here'; END$$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON feedback"
            " FOR EACH ROW EXECUTE FUNCTION refuse()")
    finally:
        await connection.close()
    path = tmp_path / "bot.sqlite3"
    source = await HistoryStore.open(path)
    await fill(source)
    await source.close()
    done = rinna_bot("migrate-db", "--to", pg_dsn, cwd=tmp_path, DATABASE_PATH=str(path))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "the copy failed and was rolled back" in done.stderr
    assert "no votes here" in done.stderr and password_of(pg_cluster) not in done.stderr
    connection = await asyncpg.connect(pg_dsn)
    try:  # conversations and turns came before feedback: rolled back with it
        assert await connection.fetchval("SELECT count(*) FROM turns") == 0
    finally:
        await connection.close()


async def test_migrate_db_refuses_a_database_holding_another_history(
        pg_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    other = await PostgresStore.open(pg_dsn)
    await other.import_turns(ConversationKey("discord", "G", "X", ""),
                             [(Turn(Speaker.USER, "別の履歴"), "x1")])
    await other.close()
    path = tmp_path / "bot.sqlite3"
    source = await HistoryStore.open(path)
    await fill(source)
    await source.close()
    done = rinna_bot("migrate-db", "--to", pg_dsn, cwd=tmp_path, DATABASE_PATH=str(path))
    assert done.returncode != 0
    assert "holds another history" in done.stderr
    assert password_of(pg_cluster) not in done.stderr
    connection = await asyncpg.connect(pg_dsn)
    try:  # nothing written
        assert await connection.fetchval("SELECT count(*) FROM turns") == 1
    finally:
        await connection.close()


def test_doctor_checks_the_connection_the_server_and_the_schema(
        pg_cluster: Cluster, tmp_path: Path) -> None:
    import asyncio

    dsn = asyncio.run(create_database(pg_cluster.dsn))
    done = rinna_bot("doctor", "--offline", cwd=tmp_path, DATABASE_URL=dsn, DEVICE="cpu")
    shown = dsn.replace(password_of(pg_cluster), "***")
    assert (f"✓ database {shown}: PostgreSQL 15" in done.stdout), done.stdout
    assert f"schema 0 (created at start ({SCHEMA_VERSION}))" in done.stdout
    asyncio.run(_open_and_close(dsn))
    migrated = rinna_bot("doctor", "--offline", cwd=tmp_path, DATABASE_URL=dsn, DEVICE="cpu")
    assert f"schema {SCHEMA_VERSION} (current)" in migrated.stdout, migrated.stdout
    away = dsn.replace(f":{pg_cluster.port}/", f":{closed_port()}/")
    down = rinna_bot("doctor", "--offline", cwd=tmp_path, DATABASE_URL=away, DEVICE="cpu")
    assert down.returncode == 1
    assert any(line.startswith("✗ database: DATABASE_URL=postgresql://postgres:***@")
               and "cannot reach PostgreSQL" in line for line in down.stdout.splitlines())
    for output in (done, migrated, down):
        assert password_of(pg_cluster) not in output.stdout + output.stderr


async def _open_and_close(dsn: str) -> None:
    store = await PostgresStore.open(dsn)
    await store.close()


async def test_forget_and_export_on_postgresql_and_forget_vacuums(
        pg_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    store = await PostgresStore.open(pg_dsn)
    try:
        await fill(store)
        waiting = await store.accept(KEY, "C1:100.000009", "まだ待っている秘密", ALICE)
        assert waiting is not None
    finally:
        await store.close()
    exported = rinna_bot("export", "--user", ALICE, cwd=tmp_path, DATABASE_URL=pg_dsn)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    texts = [line.get("text") for line in lines if "text" in line]
    assert texts == [SECRET, "DM の秘密 4111", "まだ待っている秘密"]
    assert any(line.get("feedback") == "bad" for line in lines)

    forgotten = rinna_bot("forget", "--user", ALICE, cwd=tmp_path, DATABASE_URL=pg_dsn)
    assert forgotten.returncode == 0, forgotten.stderr
    assert "deleted 3 stored messages" in forgotten.stderr
    connection = await asyncpg.connect(pg_dsn)
    try:
        rows = [tuple(row) for row in await connection.fetch(
            "SELECT text FROM turns UNION ALL"
            " SELECT text FROM deliveries WHERE text IS NOT NULL")]
        assert not any(SECRET in text or "4111" in text or "まだ待っている" in text
                       for (text,) in rows)
        assert any(KEEP == text for (text,) in rows)
        assert await connection.fetchval('SELECT count(*) FROM feedback WHERE "user" = $1',
                                         ALICE) == 0
        vacuumed = {row["relname"] for row in await connection.fetch(
            "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL")}
        assert {"turns", "deliveries", "feedback"} <= vacuumed
    finally:
        await connection.close()
    for output in (exported, forgotten):
        assert password_of(pg_cluster) not in output.stdout + output.stderr


async def test_a_platform_deletion_or_edit_on_postgresql_deletes_the_text_and_vacuums(
        pg_dsn: str) -> None:
    store = await PostgresStore.open(pg_dsn)
    try:
        await fill(store)
        assert await store.delete_delivered("slack", "C1:100.000001") == 1
        assert await store.delete_delivered("slack", "C1:100.000001") == 0
        assert await store.edit_delivered("slack", "C1:100.000002", "献立は秘密です")
        assert await store.accept(KEY, "C1:100.000001", SECRET, ALICE) is None  # not again
    finally:
        await store.close()
    connection = await asyncpg.connect(pg_dsn)
    try:
        texts = {row["text"] for row in await connection.fetch("SELECT text FROM turns")}
        assert SECRET not in texts and KEEP not in texts and "献立は秘密です" in texts
        vacuumed = {row["relname"] for row in await connection.fetch(
            "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL")}
        assert {"turns", "deliveries"} <= vacuumed
    finally:
        await connection.close()
