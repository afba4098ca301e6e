"""Route headers: a route must end at the node the channel proved sent it."""

from __future__ import annotations

import pytest

from hexamesh.serve.peerroute import (
    H_FORWARDS,
    H_PATH,
    MAX_PATH,
    PeerRoute,
    RouteError,
    read_route,
    route_headers,
)

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20


def test_a_route_grows_by_one_hop_per_forward() -> None:
    first = read_route(dict(route_headers(A, None)), A)
    assert first == PeerRoute(A, 1, (A,))
    assert read_route(dict(route_headers(B, first)), B) == PeerRoute(B, 2, (A, B))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {H_FORWARDS: "1"},
        {H_FORWARDS: "x", H_PATH: A.hex()},
        {H_FORWARDS: "1", H_PATH: "zz"},
        {H_FORWARDS: "1", H_PATH: "abcd"},  # not a node id
        {H_FORWARDS: "1", H_PATH: C.hex()},  # does not end at the sender
        {H_FORWARDS: "2", H_PATH: A.hex()},  # count and path disagree
        {H_FORWARDS: str(MAX_PATH + 1), H_PATH: ",".join([A.hex()] * (MAX_PATH + 1))},
    ],
)
def test_a_route_that_does_not_hold_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(RouteError):
        read_route(headers, A)
