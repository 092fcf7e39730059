"""Private data: file modes, authors, forget/export through the real command while the bot's
store is open, deleted text gone from the raw database files."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot.conversation import ConversationKey, Speaker, Turn
from storage.history import HistoryStore
from storage.schema import MIGRATIONS
from tests.store_setup import add_turn, take_on
from tests.test_storage import Opener, open_store  # noqa: F401 - on both engines

ROOT = Path(__file__).resolve().parent.parent
SECRET = "カード番号 4111 1111 1111 1111"
KEEP = "ボブの献立メモ 7777"
ALICE, BOB = "U0ALICE", "U0BOB"
KEY = ConversationKey("slack", "T1", "C1", "100.000001")
DM = ConversationKey("discord", "", "555")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw_bytes(db: Path) -> bytes:
    """Everything SQLite keeps on disk for this database: the file, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal"),
                                             db.with_name(db.name + "-shm")) if p.exists())


def command(*args: str, db: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DATABASE_PATH": str(db)})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


async def _fill(store: HistoryStore) -> None:
    claim = await take_on(store, KEY, "C1:100.000001")
    assert claim is not None
    await add_turn(store, claim.conversation, Turn(Speaker.USER, SECRET), ("slack", "C1:100.000001"),
                         author=ALICE)
    await add_turn(store, claim.conversation, Turn(Speaker.SYSTEM, "承知しました。"))
    claim = await take_on(store, KEY, "C1:100.000002")
    assert claim is not None
    await add_turn(store, claim.conversation, Turn(Speaker.USER, KEEP), ("slack", "C1:100.000002"),
                         author=BOB)
    dm = await take_on(store, DM, "9001")
    assert dm is not None
    await add_turn(store, dm.conversation, Turn(Speaker.USER, "DM の秘密 4111"), ("discord", "9001"),
                         author=ALICE)


# ----- file modes -----------------------------------------------------------------------------
async def test_the_data_directory_and_database_files_are_private_whatever_the_umask(
        tmp_path: Path) -> None:
    path = tmp_path / "data" / "deeper" / "h.sqlite3"
    old = os.umask(0o000)  # the loosest umask: nothing may depend on it
    try:
        store = await HistoryStore.open(path)
        claim = await take_on(store, KEY, "k")
        assert claim is not None
        await add_turn(store, claim.conversation, Turn(Speaker.USER, "x"), author=ALICE)
    finally:
        os.umask(old)
    try:
        assert mode(tmp_path / "data") == 0o700
        assert mode(tmp_path / "data" / "deeper") == 0o700
        assert mode(tmp_path) == stat.S_IMODE(tmp_path.stat().st_mode)  # existing: untouched
        for name in ("h.sqlite3", "h.sqlite3-wal", "h.sqlite3-shm"):
            assert (path.parent / name).exists(), name
            assert mode(path.parent / name) == 0o600, name
    finally:
        await store.close()


async def test_existing_database_files_readable_by_others_are_made_private(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as raw:  # as an earlier version left it: 0644 files
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("CREATE TABLE t (x)")
        keeper = sqlite3.connect(path)  # keeps -wal and -shm in place
        keeper.execute("SELECT * FROM t").fetchall()
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    for file in files:
        os.chmod(file, 0o644)
    store = await HistoryStore.open(path)
    try:
        assert [mode(f) for f in files] == [0o600, 0o600, 0o600]
    finally:
        await store.close()
        keeper.close()


# ----- authors and the migration --------------------------------------------------------------
async def test_a_database_from_before_the_migration_keeps_its_turns_without_an_author(
        tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    with sqlite3.connect(path) as raw:
        for migration in MIGRATIONS[:2]:
            raw.executescript(migration)
        raw.execute("INSERT INTO conversations VALUES (1, 'slack', 'T', 'C', '', 0, 0)")
        raw.execute("INSERT INTO turns (conversation_id, speaker, text, created_at)"
                    " VALUES (1, 'ユーザー', 'old', 0)")
        raw.execute("PRAGMA user_version = 2")
    store = await HistoryStore.open(path)
    try:
        assert [t.turn.text for t in await store.recent_turns(1, 10)] == ["old"]
        assert await store.author_turns(ALICE) == []
        await add_turn(store, 1, Turn(Speaker.USER, "new"), author=ALICE)
        assert [t.text for t in await store.author_turns(ALICE)] == ["new"]
    finally:
        await store.close()


async def test_imported_turns_may_carry_their_author(store: HistoryStore) -> None:
    await store.import_turns(KEY, [(Turn(Speaker.USER, "a"), "C1:1.0", ALICE),
                                   (Turn(Speaker.SYSTEM, "b"), "C1:2.0"),
                                   (Turn(Speaker.USER, "c"), None, BOB)])
    assert [t.text for t in await store.author_turns(ALICE)] == ["a"]
    assert [t.text for t in await store.author_turns(BOB)] == ["c"]


# ----- forget and export through the real command ---------------------------------------------
async def test_forget_deletes_a_users_messages_from_the_files_while_the_bot_runs(
        tmp_path: Path) -> None:
    db = tmp_path / "data" / "bot.sqlite3"
    bot_store = await HistoryStore.open(db)  # the running bot's connection, kept open
    try:
        await _fill(bot_store)
        assert SECRET.encode() in raw_bytes(db)  # the check below can see text when it is there

        result = command("forget", "--user", ALICE, db=db, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "deleted 2 stored messages" in result.stderr

        data = raw_bytes(db)
        assert SECRET.encode() not in data
        assert "DM の秘密".encode() not in data
        assert b"4111" not in data
        assert KEEP.encode() in data  # the other person's message is still on disk
        # the bot goes on using its connection: Bob's turn and the answer are still there
        conversation = await bot_store.find(KEY)
        assert conversation is not None
        texts = [t.turn.text for t in await bot_store.recent_turns(conversation, 10)]
        assert texts == [KEEP, "承知しました。"]
        assert await take_on(bot_store, KEY, "C1:100.000001") is None  # still never re-answered
        await add_turn(bot_store, conversation, Turn(Speaker.USER, "続き"), author=BOB)
    finally:
        await bot_store.close()


async def test_forget_can_be_limited_to_one_platform(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    store = await HistoryStore.open(db)
    await _fill(store)
    await store.close()
    result = command("forget", "--user", ALICE, "--platform", "discord", db=db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    store = await HistoryStore.open(db)
    try:
        assert [t.text for t in await store.author_turns(ALICE)] == [SECRET]
    finally:
        await store.close()


async def test_export_prints_a_users_messages_as_json_lines(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    store = await HistoryStore.open(db)
    try:
        await _fill(store)
        answered = await store.delivery("slack", "C1:100.000001")
        assert answered is not None
        await store.set_feedback(answered, ALICE, "bad")  # her vote is hers too
        await store.set_feedback(answered, BOB, "good")
        result = command("export", "--user", ALICE, db=db, cwd=tmp_path)
    finally:
        await store.close()
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    vote = lines.pop()
    assert (vote["platform"], vote["answer_to"], vote["feedback"]) == (
        "slack", "C1:100.000001", "bad")
    assert [(x["platform"], x["channel"], x["thread"], x["text"]) for x in lines] == [
        ("slack", "C1", "100.000001", SECRET), ("discord", "555", "", "DM の秘密 4111")]
    assert all(x["created_at"].endswith("+00:00") for x in lines)
    assert SECRET in result.stdout  # UTF-8 as is, not \\u escapes
    nobody = command("export", "--user", "U0NOBODY", db=db, cwd=tmp_path)
    assert nobody.returncode == 0 and nobody.stdout == ""


def test_forget_and_export_need_a_user_and_an_existing_database(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "bot.sqlite3"
    result = command("forget", db=db, cwd=tmp_path)
    assert result.returncode == 2 and "--user" in result.stderr
    for private in ("export", "forget"):  # a path to fix: 2, a retry cannot help
        result = command(private, "--user", ALICE, db=db, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"rinna-bot: DATABASE_PATH={db}: no database there (nothing is stored); set "
            "DATABASE_PATH to the bot's database file"], result.stderr
    assert not db.parent.exists()  # looking did not create anything


# ----- secure deletion at the storage level ---------------------------------------------------
async def test_platform_deletion_and_edit_leave_no_old_text_in_the_files(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    store = await HistoryStore.open(db)
    try:
        await _fill(store)
        assert await store.delete_delivered("slack", "C1:100.000001") == 1
        assert await store.delete_delivered("slack", "C1:100.000001") == 0
        assert await store.edit_delivered("slack", "C1:100.000002", "献立は秘密です")
        assert not await store.edit_delivered("slack", "C1:100.000002", "献立は秘密です")
        data = raw_bytes(db)
        assert SECRET.encode() not in data
        assert KEEP.encode() not in data
        assert "献立は秘密です".encode() in data
        assert await take_on(store, KEY, "C1:100.000001") is None  # a redelivery: not answered
    finally:
        await store.close()


@pytest.mark.parametrize("days_old, kept", [(31, False), (29, True)])
async def test_turns_older_than_the_cutoff_are_deleted(tmp_path: Path, days_old: int,
                                                      kept: bool) -> None:
    now = [1_700_000_000.0]
    db = tmp_path / "bot.sqlite3"
    store = await HistoryStore.open(db, clock=lambda: now[0])
    try:
        await _fill(store)
        now[0] += days_old * 86400
        deleted = await store.delete_older_than(now[0] - 30 * 86400)
        assert deleted == (0 if kept else 4)
        assert (SECRET.encode() in raw_bytes(db)) is kept
    finally:
        await store.close()


# ----- through the chat service: author stored, a deleted or edited message in the next prompt -
async def test_the_chat_service_stores_the_author_and_platform_changes_reach_the_prompt(
        store: HistoryStore, tokenizer) -> None:  # noqa: ANN001
    from bot.conversation import IncomingMessage
    from bot.core.chat import ChatConfig, ChatService
    from bot.core.edits import PrivateData
    from tests.fakes import RecordingSink, ScriptedGenerator

    generator = ScriptedGenerator()
    chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))
    private = PrivateData(store)
    await chat.handle(KEY, IncomingMessage(SECRET, "C1:1.0", ALICE), RecordingSink())
    await chat.handle(KEY, IncomingMessage("献立を考えて", "C1:2.0", BOB), RecordingSink())
    assert [t.text for t in await store.author_turns(ALICE)] == [SECRET]

    assert await private.message_deleted("slack", "C1:1.0")
    assert await private.message_edited("slack", "C1:2.0", "  夕飯の献立を考えて\x00 ")
    assert not await private.message_edited("slack", "C1:2.0", "   ")  # nothing readable: kept
    await chat.handle(KEY, IncomingMessage("続けて", "C1:3.0", BOB), RecordingSink())
    assert "4111" in generator.prompts[0]
    assert "4111" not in generator.prompts[-1]
    assert "ユーザー: 夕飯の献立を考えて<NL>" in generator.prompts[-1]
    assert await chat.handle(KEY, IncomingMessage(SECRET, "C1:1.0", ALICE),
                             RecordingSink()) == "duplicate"  # a redelivery stays unanswered


# ----- RETENTION_DAYS -------------------------------------------------------------------------
class ManualSleep:
    """An injected sleep: each call is reported to the test, which decides when it ends."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[tuple[float, asyncio.Event]] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        wake = asyncio.Event()
        await self.calls.put((seconds, wake))
        await wake.wait()


async def test_retention_deletes_old_turns_at_start_and_then_daily(
        tmp_path: Path, open_store: Opener) -> None:
    from bot.core.retention import DAY_S, retention

    now = [1_700_000_000.0]
    store = await open_store(tmp_path / "bot.sqlite3", clock=lambda: now[0])
    try:
        claim = await take_on(store, KEY, "old")
        assert claim is not None
        await add_turn(store, claim.conversation, Turn(Speaker.USER, "40日前"), author=ALICE)
        now[0] += 10 * DAY_S
        await add_turn(store, claim.conversation, Turn(Speaker.USER, "30日前"), author=ALICE)
        now[0] += 30 * DAY_S
        sleep = ManualSleep()
        async with retention(store, 30, clock=lambda: now[0], sleep=sleep) as sweeper:
            assert sweeper is not None
            # at start, before anything is served: the 40-day-old turn is gone
            assert [t.text for t in await store.author_turns(ALICE)] == ["30日前"]
            seconds, wake = await asyncio.wait_for(sleep.calls.get(), 10)
            assert seconds == DAY_S
            now[0] += DAY_S  # a day later the other one is over 30 days old too
            await add_turn(store, claim.conversation, Turn(Speaker.USER, "今日"), author=ALICE)
            wake.set()
            _, wake = await asyncio.wait_for(sleep.calls.get(), 10)  # swept, sleeping again
            assert [t.text for t in await store.author_turns(ALICE)] == ["今日"]
    finally:
        await store.close()


async def test_without_retention_days_everything_is_kept(tmp_path: Path,
                                                         open_store: Opener) -> None:
    from bot.core.retention import retention

    store = await open_store(tmp_path / "bot.sqlite3", clock=lambda: 0.0)
    try:
        await _fill(store)
        async with retention(store, None) as sweeper:
            assert sweeper is None
        assert len(await store.author_turns(ALICE)) == 2
    finally:
        await store.close()


def test_the_run_command_applies_retention_days_at_start(tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    with sqlite3.connect(db) as raw:  # an old database: turns from 2020 and from now
        for migration in MIGRATIONS:
            raw.executescript(migration)
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        raw.execute("INSERT INTO conversations VALUES (1, 'console', '', 'console', '', 0, 0)")
        raw.execute("INSERT INTO turns (conversation_id, speaker, text, created_at, author)"
                    " VALUES (1, 'ユーザー', ?, 1577836800, 'console')", (SECRET,))
        raw.execute("INSERT INTO turns (conversation_id, speaker, text, created_at, author)"
                    " VALUES (1, 'ユーザー', '最近の話', strftime('%s', 'now'), 'console')")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "RETENTION_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DATABASE_PATH": str(db),
                "MODEL_ID": str(tiny_model_dir), "QUANTIZATION": "none", "DEVICE": "cpu",
                "RETENTION_DAYS": "30", "LOG_LEVEL": "INFO"})
    result = subprocess.run([sys.executable, "-m", "bot.service.cli", "chat"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "older than RETENTION_DAYS=30" in result.stderr
    with sqlite3.connect(db) as raw:
        assert [r[0] for r in raw.execute("SELECT text FROM turns")] == ["最近の話"]
    assert SECRET.encode() not in raw_bytes(db)


def test_every_reset_reply_says_the_old_messages_stay_stored() -> None:
    from adapters.discord_bot import RESET_DONE as DISCORD_RESET
    from adapters.slack_app import RESET_DONE as SLACK_RESET
    from bot.core.front_door import FrontDoor

    # The console resets through the front door, whose confirmation is the platforms' one.
    for reply in (DISCORD_RESET, SLACK_RESET, FrontDoor.__init__.__kwdefaults__["reset_notice"]):
        assert "リセットしました" in reply and "削除されず、保存されたまま" in reply
    for guide in ("README.md", "docs/discord.md", "docs/slack.md"):
        text = (ROOT / guide).read_text(encoding="utf-8")
        assert "by design" in text and "forget --user" in text, guide
