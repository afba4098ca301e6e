"""The demo's promise: Ctrl-C (or SIGTERM) stops every agent it started."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_demo_stops_every_agent(tmp_path: Path, signum: int) -> None:
    command = ["demo", "--agents", "3", "--engines", "0", "--workdir", str(tmp_path / "swarm")]
    demo = subprocess.Popen(
        [sys.executable, "-m", "hexamesh", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # a default SIGINT handler even where the test runner ignores SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line.decode())
            if "agents up" in lines[-1]:
                break
        assert any("3 agents up" in line for line in lines), "".join(lines)
        pids = []
        for i in range(3):
            text = (tmp_path / "swarm" / f"agent{i}" / "agent.json").read_text()
            pids.append(int(re.search(r'"pid": (\d+)', text).group(1)))  # type: ignore[union-attr]
        assert all(_alive(pid) for pid in pids)
        demo.send_signal(signum)
        out, _ = demo.communicate(timeout=30)
        assert demo.returncode == 0
        assert "stopped 3 agents (exit codes [0, 0, 0])" in out.decode()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
