"""Small file helpers shared by the agent's state files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

__all__ = [
    "DATA_DIR_MODE",
    "LOCK_FILE_NAME",
    "DataDirBusy",
    "DataDirLock",
    "open_private_db",
    "private_dir",
    "private_file",
    "write_text_atomic",
]

LOCK_FILE_NAME = "agent.lock"


DATA_DIR_MODE = 0o700  # the data dir holds keys, prompts and answers: its owner's only
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> bool:
    """Make ``path`` (and missing parents) a directory only its owner may
    enter; True if an existing one was opened up and had to be narrowed."""
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, DATA_DIR_MODE)
        return True
    return False


def private_file(path: Path) -> None:
    """Create ``path`` if missing, with mode 0600; narrow an existing one to it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def open_private_db(path: Path) -> sqlite3.Connection:
    """An SQLite database only its owner reads (prompts, answers: its -wal
    and -shm files get the file's mode), in WAL mode, every write on disk
    when it returns (synchronous=FULL), autocommit."""
    private_file(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers never see half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class DataDirBusy(Exception):
    """Another running agent holds this data dir."""


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/agent.lock`` while an agent runs
    there: two agents on one data dir would be one node id twice, and would
    share a job queue. The kernel drops the lock when the process ends,
    SIGKILL included, so a restart after a crash finds it free."""

    def __init__(self, data_dir: Path) -> None:
        self.narrowed = private_dir(data_dir)
        self.path = data_dir / LOCK_FILE_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirBusy(
                f"{data_dir} is in use by another agent (pid {holder}); "
                "give each agent its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the flock
            self._fd = None
