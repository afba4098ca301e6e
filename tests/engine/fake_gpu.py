"""A stand-in ``nvidia-smi`` on PATH: a shell script that prints what the test
last set (or fails as told) and logs its arguments, so ``detect_device`` runs
the real subprocess path on a machine without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SCRIPT = """#!/bin/sh
echo "$*" >> "{log}"
cat "{out}"
exit $(cat "{rc}")
"""


class FakeGpu:
    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._out, self._rc, self._log = folder / "out", folder / "rc", folder / "log"
        script = folder / "nvidia-smi"
        script.write_text(SCRIPT.format(log=self._log, out=self._out, rc=self._rc))
        script.chmod(0o755)
        self.prints("NVIDIA H200, 143771, 143000")
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.delenv("HEXAMESH_DEVICE", raising=False)

    def prints(self, text: str, rc: int = 0) -> None:
        """What the next runs print (one line per GPU) and exit with."""
        self._out.write_text(text + "\n")
        self._rc.write_text(str(rc))

    def reads(self, total_mib: int, free_mib: int) -> None:
        self.prints(f"NVIDIA H200, {total_mib}, {free_mib}")

    def calls(self) -> list[str]:
        """The argument lines of every run so far."""
        return self._log.read_text().splitlines() if self._log.exists() else []


@pytest.fixture
def fake_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    return FakeGpu(tmp_path / "fake-gpu", monkeypatch)
