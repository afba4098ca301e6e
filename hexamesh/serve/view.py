"""What the front door knows of the swarm: who serves which model, how loaded.

:class:`SwarmView` is the interface the front door routes with; the agent's
implementation, :class:`CombView`, reads three sources, freshest first:

1. the local engine (its own models, load scraped every second);
2. the comb view: dances of peers within two rings (models, load, cell,
   uptime), a second old at most;
3. the DHT: ``model:<name>`` providers (address only) for a model fewer than
   ``MAX_ATTEMPTS`` peers nearby serve, and ``model:*`` (every server's model
   list) for ``/v1/models``. Both cached for ``DHT_CACHE`` seconds, since a
   lookup costs a few round trips (a failed one too, keeping what it had).
   Providers are looked up while the view offers fewer servers than a
   request may try, not only when it offers none:
   with one server in view, a request whose server died had nowhere to fail
   over to until the comb noticed the death (found by ``hexamesh simulate``).
   A request waits for the lookup (``refresh``) when it has nobody to send
   to, or when no lookup was ever made (its only backups); otherwise the
   lookup runs in ``run``, off the request path (``refresh_soon``), and
   backs up the requests after it (a lookup's providers stay candidates
   until the next lookup replaces them).

The candidates themselves are built by ``candidates.gather`` from what the
view knows (the simulator calls it the same way): peers the failure detector
holds dead are left out wherever they came from, except as *doubtful*
last-resort candidates (a server seen serving the model in the last
``RECENT`` seconds is still tried after everyone else).

The caches are keyed by the model names clients ask for, so they hold at
most ``limits.MODEL_CACHE`` models each, the least recently used dropped
first: a client naming a new model per request costs a lookup each, not
memory for ever.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol, TypeVar

import msgpack
import trio

from hexamesh.comb.service import MODEL_INDEX, Honeycomb
from hexamesh.dht.claim import decode_addr
from hexamesh.dht.service import DhtError
from hexamesh.engine.supervisor import Engine, EngineState
from hexamesh.hexgrid import Hex
from hexamesh.limits import MAX_MODEL_NAME, MODEL_CACHE
from hexamesh.net.base import Addr, peer_addr
from hexamesh.serve.candidates import Local, Peer, Recent, gather
from hexamesh.serve.router import MAX_ATTEMPTS, Candidate

__all__ = ["MODEL_INDEX", "CombView", "SwarmView", "decode_index", "wants_providers"]

log = logging.getLogger(__name__)

DHT_CACHE = 5.0  # s a DHT answer is reused
DHT_TIMEOUT = 3.0  # s for one DHT lookup on the request path


V = TypeVar("V")


class ModelCache(OrderedDict[str, V]):
    """A dict of at most ``limit`` models; setting or reading one makes it the
    most recently used, and the least recently used goes past the limit."""

    def __init__(self, limit: int = MODEL_CACHE) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: str, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)

    def touch(self, key: str) -> V | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


def wants_providers(in_view: int) -> bool:
    """Should the DHT's providers back up ``in_view`` servers seen in the comb?
    Yes while a request could try more servers than the view offers."""
    return in_view < MAX_ATTEMPTS


class SwarmView(Protocol):
    node: bytes

    async def refresh(self, model: str | None) -> None: ...
    def refresh_soon(self, model: str) -> bool: ...
    def candidates(self, model: str) -> list[Candidate]: ...
    def address(self, node: bytes) -> Addr | None: ...
    def local_url(self, model: str) -> str | None: ...
    def models(self) -> dict[str, set[bytes]]: ...


MAX_INDEX_MODELS = 64  # models one model:* entry may list (a node serves a handful)


def decode_index(value: bytes) -> tuple[Addr, tuple[str, ...]] | None:
    """A ``model:*`` entry: (host, port, [models]); None if malformed."""
    try:
        host, port, models = msgpack.unpackb(value)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    addr = peer_addr(host, port)
    if addr is None or not isinstance(models, list | tuple) or len(models) > MAX_INDEX_MODELS:
        return None
    names = tuple(m for m in models if isinstance(m, str) and 0 < len(m) <= MAX_MODEL_NAME)
    return addr, names


class CombView:
    def __init__(self, honeycomb: Honeycomb, engine: Engine | None, started: float) -> None:
        self.honeycomb = honeycomb
        self.engine = engine
        self.node = honeycomb.node
        self._started = started
        self._providers: ModelCache[tuple[float, dict[bytes, Addr]]] = ModelCache()
        self._index: tuple[float, dict[bytes, tuple[Addr, tuple[str, ...]]]] = (-math.inf, {})
        self._recent = Recent()  # who was seen serving each model lately (doubtful candidates)
        self._wanted: set[str] = set()  # models whose providers ``run`` looks up next
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look up the providers ``refresh_soon`` asked for, one model at a time."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._wanted:
                model = next(iter(self._wanted))
                try:
                    await self.refresh(model)
                finally:
                    self._wanted.discard(model)

    def _dead(self, node: bytes) -> bool:
        return self.honeycomb.is_dead(node)

    async def refresh(self, model: str | None) -> None:
        """Refresh the DHT caches a request needs (no-op while fresh)."""
        now = trio.current_time()
        dht = self.honeycomb.dht
        try:
            with trio.fail_after(DHT_TIMEOUT):
                if model is None and now - self._index[0] > DHT_CACHE:
                    entries = {}
                    for r in await dht.providers(MODEL_INDEX):
                        got = decode_index(r.value)
                        if got is not None:
                            entries[r.publisher_id] = got
                    self._index = (now, entries)
                elif model is not None and self._wants_lookup(model, now):
                    found = {}
                    for r in await dht.providers(model):
                        addr = decode_addr(r.value)
                        if addr is not None:
                            found[r.publisher_id] = addr
                    self._providers[model] = (now, found)
        except (DhtError, trio.TooSlowError) as e:
            log.debug("DHT lookup for %s failed: %s", model or "the model index", e)
            # held like an answer for DHT_CACHE s, so that a sick DHT costs one
            # request DHT_TIMEOUT per DHT_CACHE, not every request
            if model is None:
                self._index = (now, self._index[1])
            else:
                self._providers[model] = (now, self._providers.get(model, (now, {}))[1])

    def _wants_lookup(self, model: str, now: float) -> bool:
        """Whether ``model``'s providers are stale and the comb view thin."""
        return now - self._providers.get(model, (-math.inf, {}))[0] > DHT_CACHE and wants_providers(
            len(self.honeycomb.peers_with(model))
        )

    def refresh_soon(self, model: str) -> bool:
        """``refresh(model)`` off the request path (``run``); a no-op while the
        providers are fresh, the view is thick enough, or a lookup is pending.
        False when a thin view has never had its providers: the caller awaits
        ``refresh`` (once), or its request would have no backup."""
        if model in self._wanted or not self._wants_lookup(model, trio.current_time()):
            return True
        if model not in self._providers:
            return False
        self._wanted.add(model)
        self._wake.set()
        return True

    def _local(self, model: str) -> Local | None:
        if self.engine is None or self.engine.models().get(model) is not EngineState.READY:
            return None
        uptime = trio.current_time() - self._started
        return Local(node=self.node, load=self.engine.load_of(model).load, uptime=uptime)

    def candidates(self, model: str) -> list[Candidate]:
        peers = [
            Peer(node=d.node, load=d.load, cell=Hex(d.q, d.r), uptime=d.uptime)
            for d in self.honeycomb.peers_with(model)
        ]
        return gather(
            model,
            me=self.node,
            local=self._local(model),
            peers=peers,
            cell=self.honeycomb.cell,
            providers=self._providers.get(model, (0.0, {}))[1],
            is_dead=self._dead,
            addresses=self.address,
            recent=self._recent,
            now=trio.current_time(),
        )

    def address(self, node: bytes) -> Addr | None:
        dance = self.honeycomb.state_of(node)
        if dance is not None:
            return peer_addr(dance.host, dance.port)
        for _, found in self._providers.values():
            if node in found:
                return found[node]
        return self._recent.address(node)

    def local_url(self, model: str) -> str | None:
        if self.engine is None or self.engine.models().get(model) is not EngineState.READY:
            return None
        return self.engine.url(model)

    def models(self) -> dict[str, set[bytes]]:
        """Every model known to be served, and by whom."""
        out: dict[str, set[bytes]] = {}

        def add(names: Iterable[str], node: bytes) -> None:
            for name in names:
                out.setdefault(name, set()).add(node)

        if self.engine is not None:
            add((n for n, s in self.engine.models().items() if s is EngineState.READY), self.node)
        for node, dance in self.honeycomb.view().items():
            if not self._dead(node):
                add(dance.models, node)
        for node, (_, names) in self._index[1].items():
            if node != self.node and not self._dead(node):
                add(names, node)
        return out
