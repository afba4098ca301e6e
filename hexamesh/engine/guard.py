"""``python -m hexamesh.engine.guard AGENT_PID CMD...``: run CMD; if the agent dies, kill it.

The supervisor starts each vLLM server through this guard, in a process group
of its own. The guard waits for the server and exits with its status; once a
second it checks that its parent is still the agent, and when the agent is
gone (SIGKILLed: it had no chance to stop anything) it SIGKILLs the whole
group, so a dead agent leaves no vLLM behind holding memory and a port.
(Linux's PR_SET_PDEATHSIG cannot do this here: it follows the *thread* that
forked, and trio forks from a worker thread that ends when idle.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CHECK_INTERVAL = 1.0  # s between checks that the agent is alive


def main() -> None:
    agent, cmd = int(sys.argv[1]), sys.argv[2:]
    # SIGTERM goes to the whole group (the supervisor's stop): the server gets it
    # too and exits; the guard follows when it does.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    nice = int(os.environ.pop("HEXAMESH_ENGINE_NICE", "0") or 0)
    if nice:
        os.nice(nice)  # the server inherits it (CPU engines: see EngineConfig.cpu_nice)
    child = subprocess.Popen(cmd)
    while True:
        try:
            code = child.wait(timeout=CHECK_INTERVAL)
        except subprocess.TimeoutExpired:
            if os.getppid() != agent:
                os.killpg(0, signal.SIGKILL)
            continue
        sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
