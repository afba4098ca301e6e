"""In-process front doors wired to fake upstreams: a small swarm for serving tests.

Each :class:`Door` is a real ``FrontDoor`` with real sockets on 127.0.0.1: an
API listener (clients) and a peer listener (signed forwards), and a
:class:`FakeView` that says which peers serve which model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from hexamesh.dht.contact import distance
from hexamesh.net.base import Addr
from hexamesh.net.channel import ChannelKeys
from hexamesh.serve.blobs import BlobDisk, Blobs
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.serve.router import Candidate
from hexamesh.wire import KeyRing
from tests.helpers import identity
from tests.serve.fake_upstream import Behaviour, serve_fake

MODEL = "tiny"


@dataclass
class FakeView:
    node: bytes
    local: str | None = None  # URL of the local fake engine
    peers: dict[bytes, Addr] = field(default_factory=dict)  # peers that serve MODEL
    loads: dict[bytes, float] = field(default_factory=dict)
    distances: dict[bytes, int] = field(default_factory=dict)
    local_load: float = 0.0
    soon: list[str] = field(default_factory=list)  # refresh_soon's calls

    async def refresh(self, model: str | None) -> None:
        return None

    def refresh_soon(self, model: str) -> bool:
        self.soon.append(model)
        return True

    def candidates(self, model: str) -> list[Candidate]:
        if model != MODEL:
            return []
        out = [Candidate(node=self.node, local=True, load=self.local_load)] if self.local else []
        for node in self.peers:
            out.append(
                Candidate(
                    node=node, load=self.loads.get(node, 0.0), distance=self.distances.get(node, 1)
                )
            )
        return out

    def address(self, node: bytes) -> Addr | None:
        return self.peers.get(node)

    def local_url(self, model: str) -> str | None:
        return self.local if model == MODEL else None

    def models(self) -> dict[str, set[bytes]]:
        nodes = set(self.peers) | ({self.node} if self.local else set())
        return {MODEL: nodes} if nodes else {}


@dataclass
class Door:
    front: FrontDoor
    view: FakeView
    api: str  # base URL, .../v1
    peer_addr: Addr
    behaviour: Behaviour | None


async def _listen(handler, nursery: trio.Nursery) -> int:  # type: ignore[no-untyped-def]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def _close_when_done(front: FrontDoor) -> None:
    try:
        await trio.sleep_forever()
    finally:
        front.close()  # pooled upstream connections


async def start_door(
    nursery: trio.Nursery,
    keyring: KeyRing,
    index: int,
    *,
    engine: Behaviour | None = None,
    api_keys: tuple[str, ...] = (),
) -> Door:
    keys = ChannelKeys(identity(index), keyring)
    node = keys.identity.node_id
    view = FakeView(node)
    if engine is not None:
        port = await nursery.start(serve_fake, MODEL, engine)
        view.local = f"http://127.0.0.1:{port}"
    front = FrontDoor(view=view, keys=keys, address=f"127.0.0.1:{index}", api_keys=api_keys)
    nursery.start_soon(_close_when_done, front)
    api_port = await _listen(front.serve_connection, nursery)
    peer_port = await _listen(front.serve_peer, nursery)
    return Door(front, view, f"http://127.0.0.1:{api_port}/v1", ("127.0.0.1", peer_port), engine)


def link(a: Door, *servers: Door) -> None:
    """``a`` learns that ``servers`` serve the model."""
    for s in servers:
        a.view.peers[s.view.node] = s.peer_addr


def link_in_order(a: Door, *servers: Door) -> None:
    """``a`` learns that ``servers`` serve the model, each less loaded than the
    next, so the router tries them in this order."""
    link(a, *servers)
    a.view.loads = {s.view.node: i / len(servers) for i, s in enumerate(servers)}


async def entry_first_spare(
    nursery: trio.Nursery, keyring: KeyRing, first: Behaviour
) -> tuple[Door, Door, Door]:
    """An entry without an engine, a first-choice server that behaves as
    ``first`` says (dies, freezes...), and a sound spare the router tries next."""
    entry = await start_door(nursery, keyring, 1)
    chosen = await start_door(nursery, keyring, 2, engine=first)
    spare = await start_door(nursery, keyring, 3, engine=Behaviour())
    link_in_order(entry, chosen, spare)
    return entry, chosen, spare


def attach_blobs(
    doors: list[Door], tmp: Path, dead: set[bytes], *, clock: Callable[[], float] = time.time
) -> dict[bytes, Blobs]:
    """Give each door a blob store over its peer channel (mounted at
    ``/blobs/``), with a shared directory as the DHT's table: every door
    knows every other; ``dead`` is the comb's verdict."""
    where = {d.view.node: d.peer_addr for d in doors}

    def closest(key: bytes, n: int) -> list[tuple[bytes, Addr]]:
        return sorted(where.items(), key=lambda item: distance(item[0], key))[:n]

    out = {}
    for d in doors:
        blobs = Blobs(
            BlobDisk(tmp / f"blobs-{d.view.node.hex()[:6]}.sqlite"),
            d.front.keys,
            closest=closest,
            address_of=where.get,
            is_live=lambda node: node in where and node not in dead,
            clock=clock,
        )
        d.front.mount("/blobs/", blobs, peers_only=True)
        out[d.view.node] = blobs
    return out
