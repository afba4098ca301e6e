"""What the network layer offers, and what a protocol core must look like.

Two abstractions meet here:

* a :class:`Transport` moves bytes: unreliable datagrams (at most
  ``wire.MAX_DATAGRAM`` bytes, sealed) and, for larger payloads, framed streams.
  ``net.udp`` implements it with trio sockets, ``net.memory`` in memory under
  trio (with loss, delay, duplication and partitions for tests);
* a :class:`Core` is a sans-IO protocol state machine (DHT, membership,
  gossip, voting). It is fed envelopes and timer expiries with the current time
  and hands back envelopes to send (``outbox``), what came of its work for the
  rest of the agent (``events``: results, verdicts, requests for action, as
  frozen dataclasses) and the time it next wants to be woken. It never touches
  a socket, a clock or the global random module, and calls nobody back, so the
  same core runs under ``net.driver`` (trio, real time: events go to the
  services over channels) and ``net.sim`` (discrete events: the scenario
  drains them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Protocol

from hexamesh.wire import Envelope

__all__ = [
    "Addr",
    "Core",
    "FrameStream",
    "Transport",
    "format_addr",
    "parse_addr",
    "peer_addr",
]

Addr = tuple[str, int]


def peer_addr(host: object, port: object) -> Addr | None:
    """An address a peer gave (its dance, a record, a message), if usable: an
    IP literal and a port in 1..65535; else None. Never a host name: resolving
    one would let any peer make us wait on a DNS server of its choosing."""
    if type(host) is not str or type(port) is not int or not 0 < port < 65536:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def parse_addr(text: str, default_port: int | None = None) -> Addr:
    """``"host:port"``, ``"[v6]:port"`` or a bare host when a default port is given."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in address {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"address {text!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"address {text!r} has no port (expected HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in address {text!r}")
    return host, int(port_text)


def format_addr(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FrameStream(Protocol):
    """A reliable, ordered stream of length-prefixed frames."""

    async def send_frame(self, frame: bytes) -> None: ...

    async def receive_frame(self) -> bytes:
        """Next frame; raises ``EOFError`` when the peer closed cleanly."""
        ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    """Datagrams plus streams, bound to one local address."""

    @property
    def local_address(self) -> Addr: ...

    async def send(self, addr: Addr, data: bytes) -> None:
        """Best effort: a datagram may be lost; errors are counted, not raised."""
        ...

    async def receive(self) -> tuple[Addr, bytes]:
        """The next datagram and its source address."""
        ...

    async def open_stream(self, addr: Addr) -> FrameStream:
        """Connect a stream to a peer's listener; raises ``OSError`` if it is unreachable."""
        ...


class Core(Protocol):
    """The shape every sans-IO protocol core has (see STYLE.md, aioquic)."""

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        """Take one envelope that arrived from ``sender`` at time ``now``."""
        ...

    def handle_timer(self, now: float) -> None:
        """Called at (or after) the time ``next_timer`` returned."""
        ...

    def next_timer(self) -> float | None:
        """When the core next wants ``handle_timer``; None for never."""
        ...

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        """Envelopes to send, in order; the call empties the outbox."""
        ...

    def events(self) -> Sequence[object]:
        """What came of the work since the last call, in order (frozen
        dataclasses; the call empties them). A core keeps at most a bounded
        number undrained."""
        ...
