"""The attempt state machine, stepped by hand: every outcome and what follows."""

from __future__ import annotations

import pytest

from hexamesh.serve.attempts import NOT_THE_CLIENTS, Attempts, Dial, Finish, GiveUp, PassOn
from hexamesh.serve.router import MAX_ATTEMPTS, Candidate

A, B, C, D, E = (Candidate(node=bytes([i]) * 20) for i in range(1, 6))


def test_the_first_candidate_is_dialled_and_a_clean_answer_finishes() -> None:
    attempts = Attempts([A, B], what="`tiny`")
    assert attempts.start() == Dial(A, 0)
    assert attempts.done() == Finish(A)
    assert attempts.take_failed() == [] and attempts.failovers == 0


def test_nothing_to_try_is_a_503() -> None:
    action = Attempts([], what="`tiny`").start()
    assert isinstance(action, GiveUp) and action.status == 503 and not action.mid_stream


def test_refusals_fail_over_in_order_then_a_502_naming_each() -> None:
    attempts = Attempts([A, B, C], what="`tiny`")
    attempts.start()
    assert attempts.refused("A: connection refused") == Dial(B, 1)
    assert attempts.refused("B: timed out") == Dial(C, 2)
    action = attempts.refused("C: reset")
    assert action == GiveUp(
        502, "every server for `tiny` failed: A: connection refused; B: timed out; C: reset", False
    )
    assert attempts.take_failed() == [A.node, B.node, C.node]
    assert attempts.failovers == 2 and attempts.continuations == 0


def test_at_most_max_attempts_servers_are_tried() -> None:
    many = [Candidate(node=bytes([i]) * 20) for i in range(1, 10)]
    attempts = Attempts(many)
    dialled = [attempts.start()]
    while isinstance(dialled[-1], Dial):
        dialled.append(attempts.refused("no"))
    assert len(dialled) == MAX_ATTEMPTS + 1 and isinstance(dialled[-1], GiveUp)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_the_clients_own_4xx_is_passed_on(status: int) -> None:
    attempts = Attempts([A, B])
    attempts.start()
    assert attempts.answered(status, "A answered") == PassOn(status)
    assert attempts.take_failed() == []  # not the server's fault


@pytest.mark.parametrize("status", [*sorted(NOT_THE_CLIENTS), 500, 502, 503])
def test_a_4xx_that_says_nothing_of_the_request_or_a_5xx_fails_over(status: int) -> None:
    attempts = Attempts([A, B])
    attempts.start()
    assert attempts.answered(status, f"A answered {status}") == Dial(B, 1)
    assert attempts.take_failed() == [A.node]


def test_a_break_before_anything_was_sent_is_a_plain_failover() -> None:
    attempts = Attempts([A, B])
    attempts.start()
    assert attempts.broke_off("A broke off", sent=False) == Dial(B, 1, continuing=False)
    assert attempts.failovers == 1


def test_a_break_mid_answer_continues_on_the_next_server() -> None:
    attempts = Attempts([A, B, C])
    attempts.start()
    assert attempts.broke_off("A broke off", sent=True) == Dial(B, 1, continuing=True)
    # once the client holds part of the answer, every later move is a continuation
    assert attempts.refused("B refused") == Dial(C, 2, continuing=True)
    assert attempts.continuations == 2 and attempts.failovers == 0
    # and a non-200 then is not passed on: the stream has begun
    attempts2 = Attempts([A, B])
    attempts2.start()
    attempts2.broke_off("A", sent=True)
    assert attempts2.answered(400, "B said 400") == GiveUp(
        502, "every server for the request failed: A; B said 400", True
    )


def test_a_break_after_the_whole_answer_finishes_and_one_that_cannot_go_on_gives_up() -> None:
    done = Attempts([A, B])
    done.start()
    assert done.broke_off("A", sent=True, finished=True) == Finish(A)
    stuck = Attempts([A, B])
    stuck.start()
    action = stuck.broke_off("A broke off", sent=True, continuable=False)
    assert isinstance(action, GiveUp) and action.mid_stream and action.status == 502


def test_the_last_server_breaking_mid_answer_ends_it_mid_stream() -> None:
    attempts = Attempts([A])
    attempts.start()
    action = attempts.broke_off("A was declared dead", sent=True)
    assert isinstance(action, GiveUp) and action.mid_stream


def test_a_dial_race_won_by_a_later_candidate_passes_over_those_before() -> None:
    attempts = Attempts([A, B, C, D])
    assert attempts.start() == Dial(A, 0)
    assert attempts.raced(0, 3) == Dial(A, 0)  # the first won: nothing changes
    attempts = Attempts([A, B, C, D])
    attempts.start()
    assert attempts.raced(2, 3) == Dial(C, 2)
    assert attempts.take_failed() == [A.node, B.node]  # slower to connect: tried last later
    assert attempts.failovers == 1
    assert attempts.refused("C failed") == Dial(D, 3)


def test_a_dial_race_nobody_won_moves_past_all_it_raced() -> None:
    attempts = Attempts([A, B, C, D])
    attempts.start()
    assert attempts.raced(None, 3, "A, B, C: no answer to the SYN") == Dial(D, 3)
    assert attempts.take_failed() == [A.node, B.node, C.node]
    attempts = Attempts([A, B])
    attempts.start()
    action = attempts.raced(None, 2, "none connected")
    assert isinstance(action, GiveUp) and "none connected" in action.message
