"""The route a forwarded request took, carried in two headers.

Who forwarded a request is what the peer channel proved (``net.channel``:
the connection's other end, by its node key); the headers add how many
forwards it has taken and the node ids it went through, so a hop never sends
it back along its path nor past ``router``'s forward limit. The path before
the sender is hearsay from an authenticated member: it can only make the
request's own routing worse, for the member who lies about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hexamesh.identity import NODE_ID_BYTES

__all__ = [
    "H_FORWARDS",
    "H_PATH",
    "MAX_PATH",
    "PeerRoute",
    "RouteError",
    "read_route",
    "route_headers",
]

H_FORWARDS, H_PATH = "x-hexamesh-forwards", "x-hexamesh-path"
MAX_PATH = 16  # node ids a path may name: far above the router's forward limit


class RouteError(Exception):
    """Route headers that are missing, malformed, or do not end at the sender."""


@dataclass(frozen=True, slots=True)
class PeerRoute:
    """Where a forwarded request has been."""

    sender: bytes  # node id of the peer that forwarded it (the channel's other end)
    forwards: int  # forwards taken so far, this one included
    path: tuple[bytes, ...]  # node ids the request went through, sender last


def route_headers(node: bytes, route: PeerRoute | None) -> list[tuple[str, str]]:
    """Headers for forwarding a request that reached ``node`` along ``route``."""
    forwards = (route.forwards if route else 0) + 1
    path = ",".join(n.hex() for n in (*(route.path if route else ()), node))
    return [(H_FORWARDS, str(forwards)), (H_PATH, path)]


def read_route(headers: Mapping[str, str], sender: bytes) -> PeerRoute:
    """The route of a request that came over a channel from ``sender``; raises RouteError."""
    try:
        fwd, path = headers[H_FORWARDS], headers[H_PATH]
    except KeyError as e:
        raise RouteError(f"missing {e.args[0]} header") from None
    try:
        forwards = int(fwd)
        hops = tuple(bytes.fromhex(n) for n in path.split(",", MAX_PATH) if n)
    except ValueError:
        raise RouteError("malformed route headers") from None
    if len(hops) > MAX_PATH or any(len(h) != NODE_ID_BYTES for h in hops):
        raise RouteError("malformed route headers")
    if not hops or hops[-1] != sender or forwards != len(hops):
        raise RouteError("the route does not end at the node that sent it")
    return PeerRoute(sender, forwards, hops)
