"""Gathering candidates from plain inputs (pure): what the view and the simulator share."""

from __future__ import annotations

from hexamesh.hexgrid import ORIGIN, Hex
from hexamesh.serve.candidates import RECENT, Local, Peer, Recent, gather
from hexamesh.serve.router import Candidate

ME, P, Q, R = (bytes([i]) * 20 for i in range(1, 5))
ADDRS = {P: ("10.0.0.2", 7420), Q: ("10.0.0.3", 7420), R: ("10.0.0.4", 7420)}


def candidates(
    recent: Recent,
    now: float,
    *,
    local: Local | None = None,
    peers: tuple[Peer, ...] = (),
    providers: tuple[bytes, ...] = (),
    dead: frozenset[bytes] = frozenset(),
) -> list[Candidate]:
    return gather(
        "tiny",
        me=ME,
        local=local,
        peers=peers,
        cell=ORIGIN,
        providers=providers,
        is_dead=dead.__contains__,
        addresses=ADDRS,
        recent=recent,
        now=now,
    )


def test_local_then_peers_in_view_then_live_providers() -> None:
    got = candidates(
        Recent(),
        0.0,
        local=Local(ME, 0.3, 60.0),
        peers=(Peer(P, 0.5, Hex(2, 0), 10.0), Peer(ME, 0.0, ORIGIN, 0.0)),
        providers=(Q, R, ME),
        dead=frozenset({R}),
    )
    assert got == [
        Candidate(node=ME, local=True, load=0.3, uptime=60.0),
        Candidate(node=P, load=0.5, distance=2, uptime=10.0),
        Candidate(node=Q, in_view=False),
    ]


def test_a_server_seen_lately_stays_a_doubtful_last_resort_for_a_while() -> None:
    recent = Recent()
    candidates(recent, 0.0, peers=(Peer(P, 0.1, Hex(1, 0), 1.0),))
    # later it left the view (held dead, or the view lagged): still tried, last
    assert candidates(recent, 100.0) == [Candidate(node=P, in_view=False, doubtful=True)]
    assert candidates(recent, RECENT + 1.0) == []  # and then forgotten


def test_an_unknown_model_costs_nothing_and_the_models_remembered_are_bounded() -> None:
    recent = Recent(models=3)
    for i in range(10):
        gather(
            f"m{i}",
            me=ME,
            local=None,
            peers=[Peer(P, 0.1, Hex(1, 0), 1.0)] if i % 2 else [],
            cell=ORIGIN,
            providers=(),
            is_dead=lambda n: False,
            addresses=ADDRS,
            recent=recent,
            now=0.0,
        )
    assert len(recent) == 3 and not recent.knows("m0") and recent.knows("m9")
