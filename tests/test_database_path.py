"""The store opens only what is a database or nothing (issue 22): a device, a FIFO, a directory,
another kind of file or an empty file it did not create is refused in one line, untouched."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import ConfigError, DatabasePathError
from storage.files import SQLITE_HEADER
from storage.history import HistoryStore

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path, 0o644)
    return path


async def refused(path: Path, what: str) -> str:
    with pytest.raises(DatabasePathError) as error:
        await HistoryStore.open(path)
    message = str(error.value)
    assert "\n" not in message and "DATABASE_PATH" in message and what in message, message
    return message


async def test_a_fifo_is_refused_untouched_and_without_blocking(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    await refused(path, "a FIFO")
    assert stat.S_ISFIFO(os.lstat(path).st_mode) and mode(path) == 0o644


async def test_a_symbolic_link_to_a_fifo_is_judged_by_what_it_names(tmp_path: Path) -> None:
    link = tmp_path / "db.sqlite3"
    link.symlink_to(fifo(tmp_path))
    await refused(link, "a FIFO")
    assert mode(tmp_path / "pipe") == 0o644


@pytest.mark.skipif(os.geteuid() == 0, reason="as root a regression would chmod /dev/null")
async def test_a_symbolic_link_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "db.sqlite3"
    link.symlink_to("/dev/null")
    before = os.stat("/dev/null").st_mode
    await refused(link, "a character device")
    assert os.stat("/dev/null").st_mode == before


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o755)
    await refused(tmp_path / "dir", "a directory")
    assert mode(tmp_path / "dir") == 0o755


async def test_a_dangling_symbolic_link_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "db.sqlite3"
    link.symlink_to(tmp_path / "nowhere" / "x")
    await refused(link, "dangling")
    assert not (tmp_path / "nowhere").exists()


async def test_another_kind_of_file_is_refused_with_its_mode_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my notes, not a database\n")
    os.chmod(path, 0o644)
    await refused(path, "another kind")
    assert mode(path) == 0o644 and path.read_bytes() == b"my notes, not a database\n"


async def test_an_empty_file_the_store_did_not_create_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    await refused(path, "empty file")
    assert mode(path) == 0o644 and path.read_bytes() == b""


async def test_a_new_path_becomes_an_initialised_private_database(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = await HistoryStore.open(tmp_path / "new.sqlite3")
    finally:
        os.umask(old)
    await store.close()
    path = tmp_path / "new.sqlite3"
    assert path.read_bytes()[:16] == SQLITE_HEADER and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    again = await HistoryStore.open(path)  # and it opens again as a verified database
    await again.close()


def test_a_refused_path_is_one_line_and_the_config_error_exit_code(tmp_path: Path) -> None:
    path = fifo(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DATABASE_PATH": str(path)})
    for command in ("export", "forget"):
        result = subprocess.run([sys.executable, "-m", "bot.service.cli", command, "--user", "U1"],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and "DATABASE_PATH" in lines[0] and "FIFO" in lines[0]
        assert result.stdout == ""
    assert issubclass(DatabasePathError, ConfigError)
