"""The data dir lock: one agent per data dir, free again after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hexamesh.fileio import LOCK_FILE_NAME, DataDirBusy, DataDirLock


def test_a_second_agent_on_a_data_dir_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    with pytest.raises(DataDirBusy, match=f"pid {os.getpid()}"):
        DataDirLock(tmp_path)
    first.release()
    first.release()  # twice is harmless
    DataDirLock(tmp_path).release()


def test_a_sigkilled_holder_leaves_the_lock_free(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from hexamesh.fileio import DataDirLock;"
            f"DataDirLock(Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusy, match=f"pid {holder.pid}"):
            DataDirLock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    deadline = time.monotonic() + 5
    while True:  # the kernel drops the flock with the process
        try:
            DataDirLock(tmp_path).release()
            break
        except DataDirBusy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert (tmp_path / LOCK_FILE_NAME).exists()
