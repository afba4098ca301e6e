"""The guard kills the server's whole process group once the agent is SIGKILLed."""

import os
import signal
import subprocess
import sys
import time

AGENT = """
import os, subprocess, sys, time
guard = subprocess.Popen(
    [sys.executable, "-m", "hexamesh.engine.guard", str(os.getpid()),
     sys.executable, "-c", "import time; time.sleep(120)"],
    start_new_session=True,
)
print(guard.pid, flush=True)
time.sleep(120)
"""


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sigkilled_agent_leaves_no_server() -> None:
    agent = subprocess.Popen([sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    pgid = int(agent.stdout.readline())
    time.sleep(0.5)
    assert group_exists(pgid)
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    agent.stdout.close()
    deadline = time.monotonic() + 10
    while group_exists(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_exists(pgid)
