"""Contained failures are counted by component and logged once a minute per kind."""

from __future__ import annotations

import pytest

from hexamesh.faults import LOG_EVERY, Component, Faults


def test_counted_every_time_logged_once_a_minute_per_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    faults = Faults(clock=lambda: now[0])
    for _ in range(1000):
        faults.caught(Component.COMB, ValueError("bad"), "a Gossip")
    faults.caught(Component.COMB, KeyError("x"))  # another kind: its own line
    faults.caught(Component.JOBS, ValueError("bad"))  # another component: its own line
    assert faults.counts[Component.COMB] == 1001 and faults.total() == 1002
    assert len(caplog.records) == 3
    now[0] = LOG_EVERY + 1
    faults.caught(Component.COMB, ValueError("bad"))
    assert "999 more of this kind" in caplog.records[-1].getMessage()
    assert caplog.records[0].exc_info is not None  # with its traceback
