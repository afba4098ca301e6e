"""Which servers may take a request for a model, from plain inputs (pure).

Theory of operation
-------------------
:func:`gather` builds the candidate list a request is ranked from
(``router.rank``), freshest knowledge first:

1. the local engine, if it serves the model (its load scraped each second);
2. the peers in the comb's view that dance the model (load, cell, uptime: a
   second old at most);
3. the DHT's ``model:<name>`` providers (address only), unless the failure
   detector holds them dead;
4. *doubtful* last resorts: servers seen serving the model in the last
   ``RECENT`` seconds but now out of view or held dead (``Recent``). A false
   verdict, or a view that lagged under load, must not become a refusal while
   a request can still try them; the router tries them after everyone else.

The front door (``view.CombView``) and the simulator (``simulate.swarm``)
both call it with what they know, so the simulator ranks what the front door
would rank. ``Recent`` is the only state: a bounded map per model of who was
seen serving it and where.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from hexamesh.hexgrid import Hex, distance
from hexamesh.limits import MODEL_CACHE
from hexamesh.net.base import Addr
from hexamesh.serve.router import Candidate

__all__ = ["RECENT", "Local", "Peer", "Recent", "gather"]

RECENT = 300.0  # s a server seen serving a model stays a (doubtful) last-resort candidate


@dataclass(frozen=True, slots=True)
class Local:
    """The local engine, when it serves the model."""

    node: bytes
    load: float
    uptime: float


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer in the comb's view that dances the model."""

    node: bytes
    load: float
    cell: Hex
    uptime: float


class Recent:
    """Per model, the servers seen serving it lately and their addresses:
    at most ``models`` models (the least recently used go: the keys are
    names clients ask for), each entry kept ``RECENT`` seconds."""

    def __init__(self, models: int = MODEL_CACHE, keep: float = RECENT) -> None:
        self.keep = keep
        self.models = models
        self._seen: OrderedDict[str, dict[bytes, tuple[Addr, float]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def saw(self, model: str, node: bytes, addr: Addr, now: float) -> None:
        seen = self._seen.get(model)
        if seen is None:
            seen = self._seen[model] = {}
            while len(self._seen) > self.models:
                self._seen.popitem(last=False)
        self._seen.move_to_end(model)
        seen[node] = (addr, now)

    def doubtful(self, model: str, have: set[bytes], now: float) -> list[bytes]:
        """Servers of ``model`` seen lately that are not in ``have``; forgets the old."""
        seen = self._seen.get(model)
        if seen is None:
            return []
        out = []
        for node, (_, at) in list(seen.items()):
            if now - at > self.keep:
                del seen[node]
            elif node not in have:
                out.append(node)
        return out

    def knows(self, model: str) -> bool:
        return model in self._seen

    def address(self, node: bytes) -> Addr | None:
        for seen in self._seen.values():
            if node in seen:
                return seen[node][0]
        return None


def gather(
    model: str,
    *,
    me: bytes,
    local: Local | None,
    peers: Iterable[Peer],
    cell: Hex | None,
    providers: Iterable[bytes],
    is_dead: Callable[[bytes], bool],
    addresses: Mapping[bytes, Addr] | Callable[[bytes], Addr | None],
    recent: Recent,
    now: float,
) -> list[Candidate]:
    """The candidates for ``model`` (see the module doc). ``addresses`` says
    where a node is reached (for ``recent``); ``cell`` is ours, None if we
    have none yet (distances unknown)."""
    address = addresses.get if isinstance(addresses, Mapping) else addresses
    out: list[Candidate] = []
    if local is not None:
        out.append(Candidate(node=local.node, local=True, load=local.load, uptime=local.uptime))
    for p in peers:
        if p.node == me:
            continue
        out.append(
            Candidate(
                node=p.node,
                load=p.load,
                distance=None if cell is None else distance(cell, p.cell),
                uptime=p.uptime,
            )
        )
    for node in providers:
        if node != me and not is_dead(node):
            out.append(Candidate(node=node, in_view=False))
    if not out and not recent.knows(model):
        return out  # nothing known of it: no entry (an unknown name costs nothing)
    for c in out:
        addr = None if c.local else address(c.node)
        if addr is not None:
            recent.saw(model, c.node, addr, now)
    have = {c.node for c in out}
    out.extend(
        Candidate(node=node, in_view=False, doubtful=True)
        for node in recent.doubtful(model, have, now)
    )
    return out
