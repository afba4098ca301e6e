"""Services restart with backoff when they fail; only a failed first start is fatal."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from hexamesh.faults import Component, Faults
from hexamesh.services import RESTART_MAX, RESTART_MIN, Services, ServiceState


async def test_a_failing_service_is_restarted_with_backoff_and_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = Faults()
    services = Services(faults)
    starts: list[float] = []

    async def flaky(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        task_status.started("ready")
        if len(starts) <= 4:
            raise RuntimeError("boom")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        assert await nursery.start(services.run, "flaky", flaky) == "ready"
        await trio.sleep(1000)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps == [RESTART_MIN, 2 * RESTART_MIN, 4 * RESTART_MIN, 8 * RESTART_MIN]
        assert services.up("flaky") and services.restarts("flaky") == 4
        assert faults.counts[Component.SERVICE] == 4
        assert services.states()["flaky"]["last_error"] == "RuntimeError: boom"
        nursery.cancel_scope.cancel()


async def test_degraded_while_waiting_and_the_backoff_is_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    services = Services(Faults())
    starts: list[float] = []

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        task_status.started()
        await trio.sleep(0)
        raise OSError("disk gone")

    async with trio.open_nursery() as nursery:
        await nursery.start(services.run, "broken", broken)
        await trio.sleep(0.5)
        assert services.degraded() == ["broken"]
        assert services.states()["broken"]["state"] == ServiceState.RESTARTING.value
        await trio.sleep(3600)
        assert max(b - a for a, b in itertools.pairwise(starts)) == RESTART_MAX
        nursery.cancel_scope.cancel()


async def test_a_service_that_cannot_start_at_all_is_fatal() -> None:
    services = Services(Faults())

    async def unbindable(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("address in use")

    with pytest.raises(OSError, match="address in use"):
        await services.run("api", unbindable)
