"""Placement in a running agent (trio): slots in the DHT, the model loaded, the API.

The election itself is the :class:`~hexamesh.placement.vote.Scouting` core,
run by the agent's ``CoreDriver`` beside the comb. This module does what the
core asks of the world:

*Claiming a slot.* When the core reports a quorum for us (``Won``, taken from
the driver's channel by ``run``), we take one of the
election's slots, the DHT keys ``placement:<model>:<epoch>:<slot>`` for slot
< replicas, the way a cell is claimed (``comb.service``): read every replica
of the key (taken by someone else: try the next slot), store ours
(put-if-absent at the k closest), read back; if two claims raced, the older
keeps the slot on every reader (as old as its holders first saw it; within
``SIGHT_TOLERANCE`` of each other, the lower sequence number, then node id:
``dht.claim.holder_of``), so both claimants agree without talking.
The record is leased (``SLOT_TTL``) and renewed by the DHT core while we
live, so a dead winner's slot frees itself.

*Loading.* A won slot loads the model into the local engine (the same
supervised vLLM server a ``--model`` gets); once it is ready the agent
dances it and routers send it traffic. A load that fails gives the slot back.

*What may load here.* A win is taken only if the operator of this agent
allowed it: ``accept_placements`` (else the agent dances "full" and is never
approved), a source matching one of ``placement_sources``, and no other
source already serving the model's name in the swarm (its ``model:<name>``
providers name their sources). Otherwise the win is given up (the core's
``lost``) and the scouts approve others.

*The API.* ``POST /v1/placements`` (an admin call: an operator's admin key,
not a client's) proposes an election here and answers when it is over (the
core's ``Decided`` events): every replica placed, or the deadline passed.
The winners in the answer are read from the DHT. The ballot carries an
operator's signed order (``order``): the caller's, in the body, or one this
agent signs when the operator keeps their key on it. A name served already
from another source is refused (409).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from hexamesh.comb.core import Comb
from hexamesh.dht.claim import Holder, addr_value, claim, holder_of, release
from hexamesh.dht.providers import provider_source
from hexamesh.dht.service import Dht, DhtError
from hexamesh.engine.supervisor import Engine, EngineState
from hexamesh.faults import Component, Faults
from hexamesh.identity import Identity
from hexamesh.limits import MAX_ELECTION_TTL
from hexamesh.net.base import Addr, format_addr
from hexamesh.net.driver import CoreDriver
from hexamesh.placement.messages import MAX_REPLICAS, Ballot
from hexamesh.placement.order import Order, OrderError, check_order, order_from_json, sign_order
from hexamesh.placement.swarmscale import Reading, Scale, Swarmscale
from hexamesh.placement.vote import Decided, ElectionState, Key, PlacementError, Scouting, Won
from hexamesh.serve.http import HttpConnection, Request
from hexamesh.serve.requests import ApiError, parse_json_body

__all__ = ["SLOT_TTL", "Placements", "run_swarmscale", "slot_key", "source_allowed"]

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # org/name, no ".."
SLOT_TTL = 300.0  # s lease of a slot record, renewed at half by the DHT core while we live
MIN_TTL = 1.0  # s; the shortest election the API may ask for (the longest: MAX_ELECTION_TTL)


def source_allowed(source: str, patterns: tuple[str, ...]) -> bool:
    """Does ``source`` match one of ``patterns`` (shell patterns)? A directory
    is matched as it resolves here (``..`` and symlinks followed:
    ``/models/../etc`` is ``/etc``); anything else must be a hub id
    (``org/name``) and not a path that exists here (vLLM would load that
    directory instead)."""
    if source.startswith("/"):
        source = os.path.realpath(source)
    elif not _HUB_ID.match(source) or os.path.exists(source):
        return False
    return any(fnmatch.fnmatchcase(source, pattern) for pattern in patterns)


def slot_key(model: str, epoch: int, slot: int) -> str:
    return f"placement:{model}:{epoch}:{slot}"


class Placements:
    def __init__(
        self,
        core: Scouting,
        driver: CoreDriver,
        dht: Dht,
        *,
        clock: Callable[[], float],
        load: Callable[[str, str], Awaitable[None]],
        room: Callable[[], int],
        sources: tuple[str, ...] = (),
        operator: Identity | None = None,
        faults: Faults | None = None,
    ) -> None:
        """``load(name, source)`` loads a model into the local engine (raises on
        failure); ``room()`` says how many more models it may hold now;
        ``sources``: patterns of what a placement may load here; ``operator``:
        the operator's key if kept here (this agent signs orders with it)."""
        self.core = core
        self.driver = driver
        self.dht = dht
        self._clock = clock
        self._load = load
        self._room = room
        self.sources = sources
        self.operator = operator
        self.orders: dict[str, Order] = {}  # model -> the newest order we hold for it
        self.refused_loads = 0  # wins given up: a source not allowed, or a name taken
        self.faults = faults or Faults()
        self._value = addr_value(core.addr)  # what our slot records hold
        self.loading = 0  # wins being claimed or loaded: room they take already
        self.won: dict[tuple[str, int], int] = {}  # elections we hold a slot in -> slot
        self._nursery: trio.Nursery | None = None
        self._events = driver.subscribe(Won, Decided)
        self._moved: dict[Key, trio.Event] = {}  # our elections an API call waits on

    def readdress(self, addr: Addr) -> None:
        """Slots we claim from now on name ``addr`` (held ones renew as they were)."""
        self._value = addr_value(addr)

    def room(self) -> int:
        """Models this agent may still take (a win in progress counts as taken)."""
        return self._room() - self.loading

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for event in self._events:
                if isinstance(event, Won):
                    nursery.start_soon(self._contained_win, event.ballot)
                else:
                    moved = self._moved.pop((event.outcome.model, event.outcome.epoch), None)
                    if moved is not None:
                        moved.set()

    async def _contained_win(self, ballot: Ballot) -> None:
        """``_win``; what it raises ends that win only (reported to ``faults``)."""
        try:
            await self._win(ballot)
        except Exception as e:
            self.faults.caught(Component.PLACEMENT, e, f"winning {ballot.model}@{ballot.epoch}")

    def spawn(self, election: Awaitable[dict[str, Any]]) -> None:
        """Run an election in the background (swarmscale's votes); its outcome is logged."""

        async def run() -> None:
            try:
                doc = await election
            except ApiError as e:
                log.info("swarmscale vote not started: %s", e)
                return
            log.info(
                "swarmscale vote %s@%s: %s %s",
                doc["model"],
                doc["epoch"],
                doc["state"],
                [w["address"] for w in doc["winners"]],
            )

        assert self._nursery is not None, "run() first"
        self._nursery.start_soon(run)

    async def _win(self, ballot: Ballot) -> None:
        why: str | None  # why the win is given back
        if self.room() <= 0:  # another election took our room since we danced "up"
            why = "no room"
        elif not self.allowed(ballot.source):
            why = f"the source {ballot.source!r} is not in placement_sources"
        else:
            why = await self._taken(ballot.model, ballot.source)
        if why is not None:
            if why != "no room":
                self.refused_loads += 1
                log.warning("won %s@%d but will not load it: %s", ballot.model, ballot.epoch, why)
            self.core.lost(ballot.key, self._clock())
            self.driver.poke()
            return
        self.orders[ballot.model] = ballot.order
        self.loading += 1  # our room is taken while we claim; then the engine counts it
        try:
            slot = await self.claim_slot(ballot)
        except DhtError as e:
            log.warning("claiming a slot of %s@%d: %s", ballot.model, ballot.epoch, e)
            slot = None
        finally:
            self.loading -= 1
        now = self._clock()
        if slot is None:
            self.core.lost(ballot.key, now)
            self.driver.poke()
            return
        self.won[ballot.key] = slot
        self.core.claimed(ballot.key, slot, now)
        self.driver.poke()
        try:
            await self._load(ballot.model, ballot.source)  # the engine holds it from its first step
        except Exception as e:  # any failure to load: the slot goes back
            log.error("placed %s here but cannot load it: %s", ballot.model, e)
            del self.won[ballot.key]
            await self._release(slot_key(ballot.model, ballot.epoch, slot))

    def allowed(self, source: str) -> bool:
        """May a placement load ``source`` here (``placement_sources``)?"""
        return source_allowed(source, self.sources)

    async def _taken(self, model: str, source: str) -> str | None:
        """Why ``model`` may not be placed from ``source``: it is served
        already from another (as its providers say), or None."""
        try:
            records = await self.dht.providers(model)
        except DhtError as e:
            log.warning("reading who serves %s: %s", model, e)
            return None  # no answer is not a conflict: the winners check again
        for record in records:
            served = provider_source(record.value)
            if served is not None and served != source:
                return f"{model} is served already from another source ({served!r})"
        return None

    def order_for(self, model: str) -> Order | None:
        """The newest order we hold for ``model`` (placed by a vote here, or
        proposed from here), if it still stands."""
        order = self.orders.get(model)
        if order is not None and order.expires > self._clock():
            return order
        return None

    async def claim_slot(self, ballot: Ballot) -> int | None:
        """Take a free slot of the election (or find the one we hold); None if all are taken."""
        for slot in range(ballot.replicas):
            key = slot_key(ballot.model, ballot.epoch, slot)
            lost_to = await claim(
                self.dht, key, self._value, SLOT_TTL, me=self.core.me, now=self._clock(), seen=True
            )
            if lost_to is None:
                return slot
        return None

    async def _release(self, key: str) -> None:
        await release(self.dht, key, self._value)

    async def give_back(self, model: str) -> bool:
        """Free the slots we hold for ``model`` (its replica here is going); False
        if a vote did not place it here (an operator's ``--model`` stays)."""
        keys = [k for k in self.won if k[0] == model]
        for key in keys:
            slot = self.won.pop(key)
            await self._release(slot_key(key[0], key[1], slot))
        return bool(keys)

    async def slots(self, model: str, epoch: int, replicas: int) -> dict[int, Holder]:
        """Who holds each slot of an election, as the DHT says."""
        out = {}
        for slot in range(replicas):
            holder = holder_of(*await self.dht.claims(slot_key(model, epoch, slot)))
            if holder is not None:
                out[slot] = holder
        return out

    # -- the API --------------------------------------------------------------

    async def propose(
        self,
        order: Order,
        replicas: int,
        *,
        mem_need: int = 0,
        ttl: float | None = None,
    ) -> dict[str, Any]:
        """Run an election from here under ``order`` and report it once it is over."""
        model, source = order.model, order.source
        why = await self._taken(model, source)
        if why is not None:
            raise ApiError(409, f"{why}: place it under another name", code="name_taken")
        now = self._clock()
        epoch = math.floor(now * 1000)  # unique enough: one proposer, one model, one ms
        try:
            ballot = self.core.propose(order, replicas, epoch, now, mem_need=mem_need, ttl=ttl)
        except PlacementError as e:
            raise ApiError(409, f"cannot start the election: {e}", code="refused") from None
        self.orders[model] = order
        self.driver.poke()
        while True:
            outcome = self.core.outcome(model, epoch)
            if (
                outcome is None
                or outcome.state is not ElectionState.OPEN
                or len(outcome.winners) >= replicas
            ):
                break
            await self._moved.setdefault((model, epoch), trio.Event()).wait()
        try:
            held = await self.slots(model, epoch, replicas)
        except DhtError as e:
            log.warning("reading the slots of %s@%d: %s", model, epoch, e)
            held = {}
        winners = [
            {"slot": slot, "node": h.node.hex(), "address": format_addr(h.addr)}
            for slot, h in sorted(held.items())
        ]
        return {
            "object": "placement",
            "model": model,
            "source": source,
            "epoch": epoch,
            "replicas": replicas,
            "state": ElectionState.PLACED if winners else ElectionState.NO_QUORUM,
            "scouts": len(self.core.electorate(model, epoch)),
            "quorum": ballot.quorum,
            "winners": winners,
        }

    async def handle(self, request: Request, conn: HttpConnection) -> bool:
        if request.path.rstrip("/") != "/v1/placements":
            return False
        if request.method != "POST":
            raise ApiError(405, "/v1/placements takes POST")
        body = parse_json_body(request.body)
        model = body.get("model")
        if not isinstance(model, str) or not 1 <= len(model) <= 64:
            raise ApiError(400, "`model` must be a name of 1-64 characters", param="model")
        source = body.get("source", model)
        if not isinstance(source, str) or not 1 <= len(source) <= 256:
            raise ApiError(
                400, "`source` must be a directory or hub id of 1-256 characters", param="source"
            )
        replicas = body.get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise ApiError(400, "`replicas` must be an integer", param="replicas")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise ApiError(400, f"`replicas` must be in 1..{MAX_REPLICAS}", param="replicas")
        mem_need = body.get("mem_need", 0)
        if not isinstance(mem_need, int) or isinstance(mem_need, bool) or mem_need < 0:
            raise ApiError(400, "`mem_need` must be a number of bytes >= 0", param="mem_need")
        ttl = body.get("ttl")
        if ttl is not None and (
            not isinstance(ttl, int | float)
            or isinstance(ttl, bool)
            or not MIN_TTL <= ttl <= MAX_ELECTION_TTL
        ):
            raise ApiError(
                400, f"`ttl` must be {MIN_TTL:g}-{MAX_ELECTION_TTL:g} seconds", param="ttl"
            )
        order = self._order_of(body.get("order"), model, source)
        doc = await self.propose(order, replicas, mem_need=mem_need, ttl=ttl)
        await conn.respond(200, json.dumps(doc).encode(), keep_alive=request.keep_alive)
        return True

    def _order_of(self, given: object, model: str, source: str) -> Order:
        """The order a placement call runs under: the one in its body (signed
        by the operator elsewhere), else one signed here; ApiError if none
        gives the authority."""
        now = self._clock()
        if given is None:
            if self.operator is None:
                raise ApiError(
                    403,
                    "this agent holds no operator key to sign the order: send a signed "
                    "`order` (`hexamesh place --operator-key`), or call an agent that holds one",
                    type="permission_error",
                    code="no_order",
                )
            return sign_order(self.operator, model, source, now=now)
        try:
            order = order_from_json(given)
            check_order(order, operators=self.core.operators, now=now, model=model, source=source)
        except (OrderError, ValueError) as e:
            raise ApiError(403, f"`order`: {e}", type="permission_error", param="order") from None
        return order


async def run_swarmscale(
    placements: Placements,
    engine: Engine,
    comb: Comb,
    scale: Swarmscale,
    *,
    clock: Callable[[], float],
    interval: float = 1.0,
    replicas: int = 1,
) -> None:
    """Watch the models served here; call a vote for ``replicas`` more when
    they run hot, unload a voted-in replica when they run cold (``swarmscale``)."""
    while True:
        await trio.sleep(interval)
        now = clock()
        ready = [n for n, st in engine.models().items() if st is EngineState.READY]
        for model in ready:
            peers = [d for d in comb.peers_with(model) if d.node != comb.node]
            own = engine.load_of(model)
            # Only the lowest node id among the servers we see decides for them.
            if any(d.node < comb.node for d in peers):
                scale.forget(model)
                continue
            reading = Reading(
                load=(own.load + sum(d.load for d in peers)) / (1 + len(peers)),
                queue=own.waiting + sum(d.queue for d in peers),
                ttft=own.ttft_s,
                replicas=1 + len(peers),
            )
            decision = scale.observe(model, reading, now)
            if decision is Scale.ADD:
                order = placements.order_for(model)
                if order is None:  # served by --model, or its order expired: not ours to copy
                    log.info("swarmscale: %s runs hot, but no operator ordered it placed", model)
                    scale.forget(model)
                    continue
                log.info("swarmscale: %s runs hot (%s): calling a vote", model, reading)
                placements.spawn(placements.propose(order, replicas))
            elif decision is Scale.DROP and model in {k[0] for k in placements.won}:
                log.info("swarmscale: %s runs cold (%s): unloading ours", model, reading)
                await placements.give_back(model)
                await engine.unload(model)
                scale.forget(model)
