"""The agent's long-running services, each restarted with backoff when it fails.

Theory of operation
-------------------
An agent runs a handful of services for as long as it lives: the protocol
driver (DHT, comb, placement behind one socket), the comb's upkeep, the
placement service, the front door's view of the swarm, the jobs, the engine's
upkeep. Each one catches what one unit of its work raises (``faults``); should
one fail as a whole anyway, :meth:`Services.run` restarts it after
``RESTART_MIN`` seconds, doubling to ``RESTART_MAX`` while it keeps failing,
and reports it *restarting* meanwhile: in ``agent.json``, ``/health`` (status
``degraded``) and the metrics (``hexamesh_service_up``). A service that ran
for ``HEALTHY_AFTER`` since its last start begins the next backoff at the
bottom again. Only a failure while *starting* the first time is fatal (a
port that cannot be bound, a data dir that cannot be read): the agent cannot
run at all, and says so.

The restart runs the service's function again, on the same objects: a
service's state lives in its objects (the cores, the stores) and survives.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from hexamesh.faults import Component, Faults
from hexamesh.logs import printable

__all__ = ["RESTART_MAX", "RESTART_MIN", "ServiceState", "Services"]

log = logging.getLogger(__name__)

RESTART_MIN = 1.0  # s before the first restart of a failed service
RESTART_MAX = 60.0  # s; the backoff's cap
HEALTHY_AFTER = 60.0  # s of running that resets the backoff


class ServiceState(enum.Enum):
    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"  # failed; restarted after a backoff
    STOPPED = "stopped"  # returned of its own accord


@dataclass
class _Service:
    state: ServiceState = ServiceState.STARTING
    restarts: int = 0
    last_error: str | None = None


class Services:
    def __init__(self, faults: Faults, clock: Callable[[], float] = trio.current_time) -> None:
        self.faults = faults
        self._clock = clock
        self._services: dict[str, _Service] = {}

    def states(self) -> dict[str, dict[str, Any]]:
        """Each service's state, restarts and last error (for agent.json and /health)."""
        return {
            name: {"state": s.state.value, "restarts": s.restarts, "last_error": s.last_error}
            for name, s in self._services.items()
        }

    def degraded(self) -> list[str]:
        """Services failed and waiting for a restart."""
        return [n for n, s in self._services.items() if s.state is ServiceState.RESTARTING]

    def up(self, name: str) -> bool:
        service = self._services.get(name)
        return service is not None and service.state is ServiceState.UP

    def restarts(self, name: str) -> int:
        service = self._services.get(name)
        return 0 if service is None else service.restarts

    async def run(
        self,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``fn`` (started as ``nursery.start(fn)`` would) under ``name``;
        restart it with backoff whenever it raises, until cancelled. Reports
        ``task_status.started`` with what ``fn`` reported, the first time."""
        service = self._services.setdefault(name, _Service())
        delay = RESTART_MIN
        first = True
        while True:
            started_at = self._clock()
            try:
                async with trio.open_nursery() as nursery:
                    value = await nursery.start(fn)
                    service.state = ServiceState.UP
                    if first:
                        first = False
                        task_status.started(value)
            except Exception as group:
                e = _leaf(group)
                if first:
                    raise e from None  # it never started: the agent cannot run (say why)
                service.state = ServiceState.RESTARTING
                service.restarts += 1
                service.last_error = printable(f"{type(e).__name__}: {e}", 300)
                self.faults.caught(Component.SERVICE, e, f"the {name} service")
                if self._clock() - started_at >= HEALTHY_AFTER:
                    delay = RESTART_MIN
                log.warning("%s failed; restarting it in %.0f s", name, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
                continue
            service.state = ServiceState.STOPPED
            return

    def wrap(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A task-status function around ``fn``, for services that have none."""

        async def started(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await fn()

        started.__name__ = name
        return started


def _leaf(error: Exception) -> Exception:
    """The one exception inside a nursery's group (the group if there are several)."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
