"""Hosts on one machine: network namespaces on a bridge, as separate machines.

Agents that share 127.0.0.1 hide every address bug: each sees the others at
the address it uses itself. :class:`Hosts` makes real ones (Linux, as root):
a bridge in this namespace with an address of its own (so this process can
reach the agents' API ports), and per host a network namespace with its own
loopback and one veth on the bridge, ``10.<subnet>.0.<i>/24``. A host may
also get a *decoy*: an interface with an address no peer can reach, listed
before the real one, to show that an agent does not advertise the first
address it finds when peers see another.

``run_prefix(host)`` is the command prefix that runs a program on that host
(``ip netns exec``). Everything is removed on exit, namespaces first (their
veths go with them). ``unavailable()`` says why hosts cannot be made here
(not root, no ``ip``, no namespaces), for a test to skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Host", "Hosts", "unavailable"]

DECOY_NET = "192.0.2"  # TEST-NET-1: never routed (RFC 5737)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def unavailable() -> str | None:
    """Why hosts cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"hxprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as e:
        return f"cannot make a network namespace: {e.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    name: str  # its namespace
    addr: str  # its address on the bridge
    decoy: str | None = None  # an address of its that no peer can reach

    def run_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)


@dataclass
class Hosts:
    """``count`` hosts on a fresh bridge; ``decoys``: hosts that get a decoy address."""

    count: int
    decoys: frozenset[int] = frozenset()
    subnet: int = field(default_factory=lambda: 100 + os.getpid() % 100)
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = f"{os.getpid() % 10000}"
        self.bridge = f"hxbr{tag}"
        self._tag = tag
        self.gateway = f"10.{self.subnet}.0.254"  # this process, on the bridge

    def __enter__(self) -> Hosts:
        try:
            self._make()
        except BaseException:
            self._remove()
            raise
        return self

    def _make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            host = Host(name=f"hx{self._tag}h{i}", addr=f"10.{self.subnet}.0.{i}")
            _ip("netns", "add", host.name)
            _ip("-n", host.name, "link", "set", "lo", "up")
            if i - 1 in self.decoys:  # first, so it comes first in the interface list
                inside, outside = f"hx{self._tag}d{i}", f"hx{self._tag}e{i}"
                _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
                _ip("link", "set", inside, "netns", host.name)
                host.decoy = f"{DECOY_NET}.{i}"
                _ip("-n", host.name, "addr", "add", f"{host.decoy}/24", "dev", inside)
                _ip("-n", host.name, "link", "set", inside, "up")
            inside, outside = f"hx{self._tag}v{i}", f"hx{self._tag}b{i}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", inside, "netns", host.name)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", host.name, "addr", "add", f"{host.addr}/24", "dev", inside)
            _ip("-n", host.name, "link", "set", inside, "up")
            self.hosts.append(host)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for i in range(1, self.count + 1):
            subprocess.run(["ip", "netns", "del", f"hx{self._tag}h{i}"], capture_output=True)
            for end in ("b", "e"):  # veth ends left outside (gone with their peers, usually)
                subprocess.run(["ip", "link", "del", f"hx{self._tag}{end}{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
