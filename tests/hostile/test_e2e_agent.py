"""Every attack of issue 28 against one real agent process (as
``simulations.hostile`` runs them), its descriptor limit lowered so that the
connection floods meet it. After each: the agent answers /health, a newcomer
can join through it, and a completion through it works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations import hostile
from simulations.hostile import ATTACKS, Attack, Tally, Target, check

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    t = Target(Path(tmp_path_factory.mktemp("hostile")), hostile.NOFILE)
    try:
        yield t
    finally:
        t.stop()


@pytest.mark.parametrize(("name", "attack"), ATTACKS, ids=[name for name, _ in ATTACKS])
def test_the_agent_survives(target: Target, name: str, attack: Attack) -> None:
    tally = Tally()
    assert target.alive(), "an earlier attack ended the agent"
    attack(target, tally)
    ok = check(target, tally, name)
    assert target.alive(), (target.data_dir / "agent.log").read_text()[-3000:]
    assert ok, tally.failures
    assert (tally.hung, tally.five_xx, tally.unanswered) == (0, 0, 0), tally.failures
    assert not target.status().get("errors", {}).get("service")  # no service was restarted
    log = (target.data_dir / "agent.log").read_text(errors="replace")
    # What Python prints of a coroutine never awaited or an exception in a
    # destructor: a bug that answers nothing and raises nowhere.
    assert "never awaited" not in log and "Exception ignored" not in log, log[-3000:]
