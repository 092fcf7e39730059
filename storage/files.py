"""The database's files on disk: what the store agrees to open, and their private modes.

The store opens only what is a SQLite database or nothing: a path that exists must be a regular
file that starts with SQLite's header. A device (`/dev/null`), a FIFO, a directory, a non-empty
file of something else, or an empty file (the store never leaves one: it creates a database
under a temporary name and links it into place already initialised) is refused in one line,
before anything about it is changed. Modes are tightened only on files the store created or
verified: the directory it creates is 0700, the database with its -wal/-shm 0600, whatever the
umask; looser modes on an existing verified database are tightened.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.errors import DatabasePathError

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")
SQLITE_HEADER = b"SQLite format 3\x00"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def prepare_database_file(path: Path) -> None:
    """Make `path` a private SQLite database file the store may open, or refuse it
    (`DatabasePathError`, one line naming DATABASE_PATH) without touching it."""
    if os.path.lexists(path):
        _verify_and_tighten(path)
        return
    private_directory(path.parent)
    if not _create(path):  # created by someone else in the meantime: judge theirs
        _verify_and_tighten(path)


def private_directory(directory: Path) -> None:
    """Create `directory` and any missing parents as 0700; existing ones are left as they are
    (the database may live in a shared directory the operator chose)."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir(mode=DIRECTORY_MODE)
            os.chmod(new, DIRECTORY_MODE)  # mkdir's mode passes through the umask


def _refuse(path: Path, what: str) -> DatabasePathError:
    return DatabasePathError(
        f"DATABASE_PATH={path} is {what}, not a SQLite database; left untouched. "
        "Set DATABASE_PATH to the bot's database file or to a path that does not exist yet")


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def verify_database_file(path: Path) -> None:
    """Read-only: `path` (which exists) is a regular file starting with SQLite's header, and
    its -wal/-shm/-journal are regular files where present; else `DatabasePathError`. Changes
    nothing (no mode, no write): `doctor` asks this of what `run` would open."""
    with _verified(path):
        pass
    _side_files(path)


@contextlib.contextmanager
def _verified(path: Path) -> Iterator[tuple[int, os.stat_result]]:
    """The database file opened read-only once it is known to be one: (fd, its stat)."""
    try:
        before = os.stat(path)  # no side effects, even on a device
    except FileNotFoundError:
        raise _refuse(path, "a dangling symbolic link") from None
    if not stat.S_ISREG(before.st_mode):
        raise _refuse(path, _kind(before.st_mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev,
                                                                         before.st_ino):
            raise _refuse(path, "a file that changed while it was checked")
        header = os.read(fd, len(SQLITE_HEADER))
        if not header:
            raise _refuse(path, "an empty file the bot did not create")
        if header != SQLITE_HEADER:
            raise _refuse(path, "a file of another kind")
        yield fd, now
    finally:
        os.close(fd)


def _side_files(path: Path) -> list[tuple[Path, os.stat_result]]:
    """The database's -wal/-shm/-journal that exist, each a regular file (else refused)."""
    found = []
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        try:
            side_stat = os.lstat(side)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(side_stat.st_mode):
            raise _refuse(side, _kind(side_stat.st_mode))
        found.append((side, side_stat))
    return found


def _verify_and_tighten(path: Path) -> None:
    with _verified(path) as (fd, now):
        tighten(path, now.st_mode, functools.partial(os.fchmod, fd))
    for side, side_stat in _side_files(path):
        tighten(side, side_stat.st_mode, functools.partial(os.chmod, side))


def _create(path: Path) -> bool:
    """Create an initialised, private database at `path` (False: it appeared meanwhile).
    It is built under a temporary name and linked into place, so `path` is never an empty
    file: an empty file there was not made by the store."""
    temporary = path.with_name(f".{path.name}.new-{os.getpid()}")
    _remove(temporary)  # left by a crash of this very pid number
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        raw = sqlite3.connect(temporary)
        try:
            raw.execute("PRAGMA journal_mode = WAL")  # writes the header: a database now
        finally:
            raw.close()
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: rename, unless it appeared
            if os.path.lexists(path):
                return False
            os.rename(temporary, path)
        return True
    finally:
        _remove(temporary)


def _remove(temporary: Path) -> None:
    for suffix in ("", *SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary.with_name(temporary.name + suffix))


def tighten(path: Path, mode: int, chmod: Callable[[int], None]) -> None:
    if stat.S_IMODE(mode) & 0o077:
        try:
            chmod(stat.S_IMODE(mode) & ~0o077 | 0o600)
        except OSError as exc:
            log.warning("%s is readable by other users and could not be made private (%s)",
                        path, exc.strerror)
