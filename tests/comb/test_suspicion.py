import pytest

from hexamesh.comb.suspicion import (
    Awareness,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 4.0), (5, 4.0), (10, 4.0), (50, 6.79588), (100, 8.0), (1000, 12.0), (10_000, 16.0)],
)
def test_suspicion_timeout_grows_with_log_n(n: int, expected: float) -> None:
    # memberlist util_test.go TestSuspicionTimeout uses mult 3, interval 1 s: 3, 3, 3, 5.097, 6, 9
    assert suspicion_timeout(4, n, 1.0) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0), (1, 4), (9, 4), (10, 8), (99, 8), (100, 12), (999, 12), (1000, 16)]
)
def test_retransmit_limit(n: int, expected: int) -> None:
    assert retransmit_limit(4, n) == expected


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "expected"),
    [
        # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),
        (2, 3, 3.0, 4.810371),
        (3, 3, 4.0, -2.0),
        (4, 3, 5.0, -3.0),
        (5, 3, 10.0, -8.0),
    ],
)
def test_remaining_suspicion_time_table(n: int, k: int, elapsed: float, expected: float) -> None:
    assert remaining_suspicion_time(n, k, elapsed, 2.0, 30.0) == pytest.approx(expected, abs=1e-3)


def test_no_expected_confirmations_means_the_minimum() -> None:
    assert remaining_suspicion_time(0, 0, 1.0, 2.0, 30.0) == 1.0


def test_awareness_is_bounded_and_scales() -> None:
    a = Awareness(maximum=8)
    a.apply(-1)
    assert a.score == 0 and a.scale(1.0) == 1.0
    for _ in range(20):
        a.apply(1)
    assert a.score == 7 and a.scale(0.5) == 4.0
