"""Which address an agent gives its peers: its best guess, then what they see.

Theory of operation
-------------------
An agent bound to every interface (``0.0.0.0``, the default) must tell its
peers one address to dial: in its dance, its cell and ``model:`` records, its
SWIM announcements. Loopback works only for peers on the same host, and on a
host with several interfaces only one may be reachable from the swarm.

*The guess.* ``--advertise`` if given; the bound address if it is not a
wildcard; else the local address the kernel would route to a seed or saved
contact from (a UDP ``connect`` sends nothing); else the first address of a
non-loopback interface (``local_hosts``); else loopback, alone on its host.

*What peers see.* As libp2p's identify and STUN do, peers report the address
they reach us at: a ``Ping`` names the address it was sent to, a ``Pong`` the
address the ping came from (``net.rtt``). Joiners ping their seeds, so the
founder hears the invite's address; an agent restarted without seeds pings
its saved contacts and hears its own. :class:`AddressBook` keeps each
reporter's latest report for ``REPORT_TTL`` (``MAX_REPORTERS`` at most) and
adopts the address named by the most reporters (told apart by their IP
addresses) once it beats the current one: at once if it is one of this
host's own interface addresses (a peer cannot make us claim another host's),
after two independent reporters if it is not (behind NAT). A report of
loopback counts only on a host that has nothing else. A configured or
specifically bound address is never changed.
When the address changes the agent re-announces (``agent.Readdress``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from hexamesh.net.base import Addr

__all__ = [
    "MAX_REPORTERS",
    "REPORT_TTL",
    "AddressBook",
    "guess_host",
    "is_loopback",
    "is_wildcard",
    "local_hosts",
]

REPORT_TTL = 600.0  # s a peer's report of our address counts
MAX_REPORTERS = 64  # reporters remembered (the oldest report goes first)
FOREIGN_QUORUM = 2  # reporters needed for an address that is not one of our interfaces'
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def local_hosts() -> list[str]:
    """This host's IPv4 interface addresses, in interface order (Linux; [] elsewhere)."""
    out: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                packed = fcntl.ioctl(
                    s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
                )
            except OSError:  # no IPv4 address on it, or not Linux
                continue
            out.append(socket.inet_ntoa(packed[20:24]))
    return out


def route_from(dest: Addr) -> str | None:
    """The local address the kernel would send to ``dest`` from; None if no route."""
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(dest)  # UDP: picks a route, sends nothing
            return str(s.getsockname()[0])
        except OSError:
            return None


def guess_host(bound: str, advertise: str | None, towards: list[Addr], hosts: list[str]) -> str:
    """The address to advertise before any peer has said what it sees (see above)."""
    if advertise:
        return advertise
    if not is_wildcard(bound):
        return bound
    for dest in towards:
        got = route_from(dest)
        if got is not None and not is_wildcard(got):
            return got
    for host in hosts:
        if not is_loopback(host):
            return host
    return "127.0.0.1"


@dataclass
class AddressBook:
    """Our advertised address and the reports that may change it (pure)."""

    current: Addr
    fixed: bool  # configured, or bound to one address: never changes
    local: frozenset[str] = field(default_factory=frozenset)  # our interfaces' addresses
    _reports: dict[str, tuple[Addr, float]] = field(default_factory=dict)  # reporter -> last

    def report(self, reporter: str, seen: Addr, now: float) -> Addr | None:
        """The peer at IP ``reporter`` reaches us at ``seen``: the new address if we
        adopt one. Reporters are told apart by IP address: a node id costs
        nothing to make."""
        if self.fixed or not seen[0] or is_wildcard(seen[0]):
            return None
        if is_loopback(seen[0]) and any(not is_loopback(h) for h in self.local):
            return None  # a peer on our host: others cannot use that
        self._reports.pop(reporter, None)  # re-inserted last: the oldest go first
        self._reports[reporter] = (seen, now)
        while len(self._reports) > MAX_REPORTERS:
            del self._reports[next(iter(self._reports))]
        votes: dict[Addr, int] = {}
        for addr, at in self._reports.values():
            if now - at <= REPORT_TTL:
                votes[addr] = votes.get(addr, 0) + 1
        best = max(votes, key=lambda a: (votes[a], a == self.current))
        if best == self.current or votes[best] <= votes.get(self.current, 0):
            return None
        if best[0] not in self.local and votes[best] < FOREIGN_QUORUM:
            return None
        self.current = best
        return best
