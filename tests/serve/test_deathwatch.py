"""The death watch: waits registered by server, cut once by a verdict, gone after."""

from __future__ import annotations

import pytest

from hexamesh.serve.deathwatch import DeathWatch

A, B = b"a" * 20, b"b" * 20


def test_a_verdict_cuts_every_wait_on_that_server_once() -> None:
    watch = DeathWatch()
    cut: list[str] = []
    with (
        watch.waiting_on(A, lambda: cut.append("first")),
        watch.waiting_on(A, lambda: cut.append("second")),
        watch.waiting_on(B, lambda: cut.append("other")),
    ):
        assert watch.waiting(A) == 2 and watch.waiting(B) == 1
        assert watch.dead(A) == 2
        assert sorted(cut) == ["first", "second"]
        assert watch.dead(A) == 0  # told twice: nothing left to cut
        assert watch.waiting(A) == 0 and watch.waiting(B) == 1
    assert cut.count("other") == 0
    assert watch.cut == 2


def test_a_wait_that_ended_is_not_cut() -> None:
    watch = DeathWatch()
    cut: list[int] = []
    with watch.waiting_on(A, lambda: cut.append(1)):
        pass
    with pytest.raises(RuntimeError), watch.waiting_on(A, lambda: cut.append(2)):
        raise RuntimeError("the request failed on its own")
    assert watch.dead(A) == 0 and cut == [] and watch.waiting(A) == 0


def test_equal_callbacks_are_separate_waits() -> None:
    watch = DeathWatch()
    calls: list[None] = []

    def cut() -> None:
        calls.append(None)

    with watch.waiting_on(A, cut):
        with watch.waiting_on(A, cut):
            pass
        assert watch.waiting(A) == 1  # the inner one left, the outer one stays
        watch.dead(A)
    assert len(calls) == 1
