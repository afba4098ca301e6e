"""What an agent advertises: its guess, then what peers report (pure, table-driven)."""

from __future__ import annotations

import pytest

from hexamesh.net.address import (
    FOREIGN_QUORUM,
    MAX_REPORTERS,
    REPORT_TTL,
    AddressBook,
    guess_host,
    local_hosts,
)

HERE = frozenset({"127.0.0.1", "10.77.0.1", "192.168.5.1"})  # this host's interfaces


def book(current: tuple[str, int] = ("192.168.5.1", 7420), fixed: bool = False) -> AddressBook:
    return AddressBook(current=current, fixed=fixed, local=HERE)


def test_a_peer_reaching_us_at_another_of_our_addresses_moves_us_at_once() -> None:
    b = book()
    assert b.report("10.77.0.2", ("10.77.0.1", 7420), 0.0) == ("10.77.0.1", 7420)
    assert b.current == ("10.77.0.1", 7420)
    assert b.report("10.77.0.3", ("10.77.0.1", 7420), 1.0) is None  # no change: nothing new


def test_an_address_not_ours_needs_two_reporters_told_apart_by_ip() -> None:
    b = book()
    assert b.report("198.51.100.1", ("203.0.113.9", 41000), 0.0) is None  # one: not enough
    assert b.report("198.51.100.1", ("203.0.113.9", 41000), 1.0) is None  # the same one again
    assert FOREIGN_QUORUM == 2
    assert b.report("198.51.100.2", ("203.0.113.9", 41000), 2.0) == ("203.0.113.9", 41000)


def test_the_most_reporters_win_ties_keep_what_we_have() -> None:
    b = book(("10.77.0.1", 7420))
    b.report("10.77.0.2", ("10.77.0.1", 7420), 0.0)
    assert b.report("192.168.5.9", ("192.168.5.1", 7420), 1.0) is None  # 1 against 1
    assert b.report("192.168.5.8", ("192.168.5.1", 7420), 2.0) == ("192.168.5.1", 7420)


def test_old_reports_stop_counting() -> None:
    b = book(("10.77.0.1", 7420))
    b.report("10.77.0.2", ("10.77.0.1", 7420), 0.0)
    b.report("10.77.0.3", ("10.77.0.1", 7420), 0.0)
    # two old votes for the current one have expired: one new vote moves us
    assert b.report("192.168.5.9", ("192.168.5.1", 7420), REPORT_TTL + 1) == ("192.168.5.1", 7420)


@pytest.mark.parametrize(
    "seen",
    [("127.0.0.1", 7420), ("0.0.0.0", 7420), ("", 7420)],
)
def test_loopback_and_wildcards_are_never_adopted_with_a_real_interface(
    seen: tuple[str, int],
) -> None:
    b = book()
    for i in range(5):
        assert b.report(f"10.0.0.{i}", seen, float(i)) is None
    assert b.current == ("192.168.5.1", 7420)


def test_a_configured_or_bound_address_never_moves() -> None:
    b = book(fixed=True)
    for i in range(5):
        assert b.report(f"10.77.0.{i}", ("10.77.0.1", 7420), float(i)) is None


def test_reporters_are_bounded() -> None:
    b = book()
    for i in range(MAX_REPORTERS * 3):
        b.report(f"198.51.{i // 250}.{i % 250}", ("203.0.113.9", 1), float(i))
    assert len(b._reports) == MAX_REPORTERS


@pytest.mark.parametrize(
    ("bound", "advertise", "hosts", "expected"),
    [
        ("0.0.0.0", "10.9.9.9", ["10.77.0.1"], "10.9.9.9"),  # configured
        ("10.77.0.1", None, ["10.77.0.1"], "10.77.0.1"),  # bound to one address
        ("0.0.0.0", None, ["127.0.0.1", "10.77.0.1"], "10.77.0.1"),  # never loopback...
        ("0.0.0.0", None, ["127.0.0.1"], "127.0.0.1"),  # ...unless alone on its host
        ("0.0.0.0", None, [], "127.0.0.1"),
    ],
)
def test_the_first_guess(
    bound: str, advertise: str | None, hosts: list[str], expected: str
) -> None:
    assert guess_host(bound, advertise, [], hosts) == expected


def test_the_guess_follows_the_route_to_a_seed() -> None:
    # a seed on loopback is reached from loopback (the kernel's answer, no packet sent)
    assert guess_host("0.0.0.0", None, [("127.0.0.1", 9)], ["10.77.0.1"]) == "127.0.0.1"


def test_local_hosts_lists_this_machines_interfaces() -> None:
    assert "127.0.0.1" in local_hosts()
