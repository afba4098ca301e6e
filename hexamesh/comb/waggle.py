"""Waggle gossip: each node's *dance* (its state) spread over its links (sans-IO).

Theory of operation
-------------------
A :class:`Dance` is what a node tells its neighbourhood about itself: cell,
address, incarnation, status, models, load, queue, KV-cache use, tokens/s,
GPU memory, uptime and a version counter that grows with every change.

A node pushes its dance to its links at least every ``heartbeat``, and sooner
(but not more often than every ``min_interval``) when it changed noticeably
(status or models changed, or load/KV use moved by more than ``load_delta``)
or when it heard a noticeable change from a link that it should relay.
Each push also carries the dances it heard *fresh* since its last push, each
with a hop budget that drops by one per relay (``hops``, default 2 rings), so
every node holds a recent view of its neighbourhood at a constant cost per
node whatever the swarm size. A node also dances to whoever danced to it
lately (``answer_for`` heartbeats): across holes links can be one-sided, and
the relation must be two-way for both proof of life and the two-ring view.
A dance older than the one held is ignored: a lower incarnation, or the same
and a lower version (a restarted node starts again at version 1, at a higher
incarnation, so its old dances that peers still relay lose); a view entry not
refreshed for ``expiry`` is dropped. So is the dance of a node the failure
detector holds dead (``dead``, set by the owner): ring-1 nodes relay each
other's copies of it, and each copy refreshed the others', so a dead node's
dance went round its old neighbourhood for as long as the swarm ran (a fifth of
every view two minutes after a mass failure).

Any push from a link is also proof of life for the failure detector: in
steady state neighbours hear each other every heartbeat and need no probes.

A dance's advert (node, address, cell, incarnation, status, models) is
signed by its node (``advert``): a relayed dance whose advert is not proven
by its node's key is dropped (``unproven``); its figures (load, queue) are
the relay's word.

A node without a cell yet (joining, or back from a restart) takes dances but
pushes none (``dancing``, until ``start``), not even to whoever dances to it:
its dance names a stand-in cell, and a neighbour that heard it learned that it
owned it, then, when it danced its real cell, forgot that cell's owner with it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from hexamesh.comb.advert import PROOF_BYTES, PROOF_EVERY, PROOF_FRESH, Signer, advert_bytes
from hexamesh.identity import NODE_ID_BYTES
from hexamesh.net.base import Addr
from hexamesh.wire import (
    MAX_DATAGRAM,
    SEAL_OVERHEAD,
    Envelope,
    Len,
    MaxLen,
    Message,
    Struct,
    message,
    struct,
)

__all__ = ["Dance", "HopDance", "Waggle", "WaggleConfig", "WaggleMsg"]


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Dance(Struct):
    node: Annotated[bytes, Len(NODE_ID_BYTES)]
    host: Annotated[str, MaxLen(64)]
    port: int
    q: int  # cell, axial
    r: int
    incarnation: int
    status: Annotated[str, MaxLen(16)]  # "up", "draining", ...
    models: Annotated[tuple[Annotated[str, MaxLen(64)], ...], MaxLen(8)]
    load: float  # 0..1 (EngineLoad)
    queue: int  # requests waiting
    kv: float  # KV-cache use, 0..1
    tok_s: float  # generation throughput
    gpu_used: int  # bytes
    gpu_total: int  # bytes
    uptime: float  # s
    version: int  # grows with every change
    # Its node's signature of its advert (``advert``), on some pushes; else empty.
    proof: Annotated[bytes, MaxLen(PROOF_BYTES)] = b""

    @classmethod
    def first(
        cls,
        node: bytes,
        addr: Addr,
        q: int,
        r: int,
        *,
        models: tuple[str, ...] = (),
        load: float = 0.0,
        status: str = "up",
    ) -> Dance:
        """A node's first dance: idle, nothing measured yet, version 1."""
        return cls(
            node=node,
            host=addr[0],
            port=addr[1],
            q=q,
            r=r,
            incarnation=0,
            status=status,
            models=models,
            load=load,
            queue=0,
            kv=0.0,
            tok_s=0.0,
            gpu_used=0,
            gpu_total=0,
            uptime=0.0,
            version=1,
        )


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class HopDance(Struct):
    dance: Dance
    hops: int  # relays still allowed


@message(0x0205)
@dataclass(frozen=True, slots=True, kw_only=True)
class WaggleMsg(Message):
    dances: Annotated[tuple[HopDance, ...], MaxLen(16)]


@dataclass(frozen=True, kw_only=True)
class WaggleConfig:
    heartbeat: float = 1.0  # s; longest silence towards a link (doubles as proof of life)
    min_interval: float = 0.2  # s; fastest re-dance on a noticeable change
    load_delta: float = 0.1  # a load or KV move this large is "noticeable"
    hops: int = 2  # rings a dance travels (own links + their links)
    expiry: float = 60.0  # s; a view entry not refreshed this long is dropped
    relay_every: int = 10  # heartbeats between re-relays of unchanged dances (keeps ring 2 alive)
    relay_pushes: int = 2  # pushes that carry a fresh dance onwards (one lost datagram is not
    # a stale ring 2: the next push repeats it)
    max_view: int = 512  # entries kept; a neighbourhood of 2 rings is ~20
    answer_for: float = 3.0  # heartbeats a node keeps dancing to one that danced to it


@dataclass(slots=True)
class _Seen:
    dance: Dance  # without its proof
    at: float
    hops: int
    relays_left: int = 0
    proof: bytes = b""  # of its advert, if we hold one
    proof_relays: int = 0  # relays left that carry the proof (it came lately)


def _advert_key(d: Dance) -> tuple[object, ...]:
    """The advert's fields (``advert.advert_bytes`` encodes them), cheap to compare."""
    return (d.host, d.port, d.q, d.r, d.incarnation, d.status, d.models)


_DANCE_BYTES = 160  # on the wire with two short model names; used to fill a datagram
_MAX_CARRIED = 16  # dances in one push (WaggleMsg's bound)


class Waggle:
    def __init__(
        self,
        dance: Dance,
        config: WaggleConfig,
        rng: random.Random,
        now: float,
        *,
        signer: Signer | None = None,
        dancing: bool = True,
    ) -> None:
        self.config = config
        self.dancing = dancing  # False until our node has a cell (``start``)
        # None: dances are not checked (unit tests of other parts); the agent
        # signs with its node key, the simulator with a stand-in (``advert``).
        self.signer = signer
        self._advert: tuple[object, ...] = ()  # our advert signed last (_advert_key)
        self._proof = b""
        self._proof_pushes = 0  # pushes left that carry our proof
        # node -> (its advert proven, the proof we hold of it: b"" if from itself)
        self._proven: OrderedDict[bytes, tuple[tuple[object, ...], bytes]] = OrderedDict()
        self.unproven = 0  # relayed dances dropped: their advert not proven
        self._proofs_for: dict[bytes, None] = {}  # new links owed our relays' proofs
        self._new_proof = False  # (set by _proof_of: the dance proved an advert anew)
        self._rng = rng
        self.dance = dance
        self.links: dict[bytes, Addr] = {}
        self._dancers: dict[bytes, tuple[Addr, float]] = {}  # danced to us -> (addr, when)
        self.view: dict[bytes, _Seen] = {}
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._next_push = now + rng.uniform(0, config.heartbeat)  # spread the swarm's pushes
        self._last_push = -math.inf  # never
        self._pushes = 0
        # Nodes held dead -> the incarnation they are held dead at (the failure
        # detector's). Their dances at that incarnation or lower are dropped, not
        # kept or relayed; a dance at a higher one is a refutation and passes.
        self.dead: Mapping[bytes, int] = {}
        self._sign(dance)

    def _sign(self, dance: Dance) -> None:
        """Sign our advert if it changed; carry the proof for a few pushes."""
        if self.signer is None:
            return
        key = _advert_key(dance)
        if key != self._advert:
            self._advert, self._proof = key, self.signer.sign(advert_bytes(dance))
            self._proof_pushes = PROOF_FRESH

    def _proof_of(self, d: Dance, sender_node: bytes | None) -> bytes | None:
        """None if ``d`` is not proven: neither from its own node (the frame
        proved the sender), nor of an advert proven before, nor proving itself.
        Else the proof of its advert we hold (b"" if none: from its node)."""
        signer = self.signer
        if signer is None:
            return b""
        key = _advert_key(d)
        held = self._proven.get(d.node)
        proof = held[1] if held is not None and held[0] == key else None
        if d.proof and d.proof != proof and signer.verify(d.node, advert_bytes(d), d.proof):
            proof = d.proof  # (a proof that does not verify is ignored)
            self._new_proof = True
        if proof is None:
            if d.node != sender_node:
                return None
            proof = b""
        self._proven[d.node] = (key, proof)
        self._proven.move_to_end(d.node)
        if len(self._proven) > 2 * self.config.max_view:
            self._proven.popitem(last=False)
        return proof

    def start(self, now: float) -> None:
        """Our node has its cell (our dance names it): dance from now on, at once."""
        self.dancing = True
        self._push_soon(now)

    def set_links(self, links: dict[bytes, Addr]) -> None:
        new = [n for n in links if n not in self.links and n != self.dance.node]
        self.links = {n: a for n, a in links.items() if n != self.dance.node}
        if new and self.signer is not None:
            # A new link may hold none of the adverts we relay: it gets their
            # proofs, once, at our next push.
            self._proofs_for.update(dict.fromkeys(new))

    def dancers(self) -> dict[bytes, Addr]:
        """Nodes that danced to us lately (they hold us as a link)."""
        return {n: addr for n, (addr, _) in self._dancers.items()}

    def update(self, now: float, **changes: object) -> None:
        """Change our dance; dances sooner when the change is noticeable."""
        old = self.dance
        fields = {f: getattr(old, f) for f in old.__dataclass_fields__ if f != "version"}
        fields.update(changes)
        new = Dance(version=old.version + 1, **fields)
        self.dance = new
        self._sign(new)
        if self._noticeable(old, new):
            self._push_soon(now)

    def _noticeable(self, old: Dance, new: Dance) -> bool:
        delta = self.config.load_delta
        return (
            new.status != old.status
            or new.models != old.models
            # a new cell: the neighbours link to us only once they hear of it
            or (new.q, new.r) != (old.q, old.r)
            # a new address or incarnation: links reach and believe us by it
            or (new.host, new.port, new.incarnation) != (old.host, old.port, old.incarnation)
            or abs(new.load - old.load) > delta
            or abs(new.kv - old.kv) > delta
        )

    def _push_soon(self, now: float) -> None:
        soonest = max(now, self._last_push + self.config.min_interval)
        self._next_push = min(self._next_push, soonest)

    def receive(
        self,
        msg: WaggleMsg,
        now: float,
        sender: Addr | None = None,
        sender_node: bytes | None = None,
    ) -> list[Dance]:
        """Take a push (from ``sender``, node ``sender_node``, whom we then dance
        to for a while); returns the dances that were news."""
        news = []
        for hd in msg.dances:
            d = hd.dance
            if d.node == self.dance.node:
                continue
            self._new_proof = False
            proof = self._proof_of(d, sender_node)
            if proof is None:
                self.unproven += 1
                continue
            # A proof new to us: the next relays carry it on, as they do a new
            # version; its node's own now and then (for whoever missed it): one.
            if self._new_proof:
                fresh = self.config.relay_pushes
            else:
                fresh = 1 if d.proof and d.node == sender_node else 0
            dead_at = self.dead.get(d.node)
            if dead_at is not None and d.incarnation <= dead_at:
                self.view.pop(d.node, None)
                continue
            seen = self.view.get(d.node)
            if seen is not None and (seen.dance.incarnation, seen.dance.version) >= (
                d.incarnation,
                d.version,
            ):
                if seen.dance.version == d.version and seen.dance.incarnation == d.incarnation:
                    seen.at = now  # still current
                    if hd.hops > seen.hops:
                        # Heard first by a relay, now from the source: ours to relay on.
                        seen.hops = hd.hops
                        seen.relays_left = self.config.relay_pushes
                    if fresh:
                        seen.proof, seen.proof_relays = proof, fresh  # pass the proof on
                        seen.relays_left = max(seen.relays_left, 1)
                continue
            if hd.hops > 1 and (seen is None or self._noticeable(seen.dance, d)):
                self._push_soon(now)  # relay a noticeable change now, not at the heartbeat
            held = dataclasses.replace(d, proof=b"") if d.proof else d  # (kept apart)
            self.view[d.node] = _Seen(held, now, hd.hops, self.config.relay_pushes, proof, fresh)
            news.append(d)
        if sender is not None and msg.dances and msg.dances[0].hops == self.config.hops:
            dancer = msg.dances[0].dance.node
            if self.signer is not None and dancer not in self._dancers and dancer not in self.links:
                self._proofs_for[dancer] = None  # we dance to it now: it needs our proofs
            self._dancers[dancer] = (sender, now)
        if len(self.view) > self.config.max_view:
            for node, _ in sorted(self.view.items(), key=lambda kv: kv[1].at)[
                : len(self.view) - self.config.max_view
            ]:
                del self.view[node]
        return news

    def handle_timer(self, now: float) -> None:
        dead = self.dead
        for node, seen in list(self.view.items()):
            if now - seen.at > self.config.expiry or seen.dance.incarnation <= dead.get(node, -1):
                del self.view[node]
        if now >= self._next_push:
            self._push(now)

    def next_timer(self) -> float:
        return self._next_push

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    def _push(self, now: float) -> None:
        self._last_push = now
        self._next_push = now + self.config.heartbeat
        answer_since = now - self.config.answer_for * self.config.heartbeat
        self._dancers = {n: v for n, v in self._dancers.items() if v[1] >= answer_since}
        if not self.dancing:
            # (our dance's cell is a stand-in: nobody must take it for ours);
            # what we owe is kept for those still dancing to us, no more: a
            # node that stays unplaced must not gather every dancer it met
            keep = self._dancers.keys() | self.links.keys()
            self._proofs_for = {n: None for n in self._proofs_for if n in keep}
            return
        self._pushes += 1
        targets = dict(self.links)
        for node, (addr, _) in self._dancers.items():
            targets.setdefault(node, addr)
        targets.pop(self.dance.node, None)
        if not targets:
            return
        if self._pushes % self.config.relay_every == 0:
            for seen in self.view.values():
                seen.relays_left = max(seen.relays_left, 1)  # now and then, unchanged ones too
        own = self.dance
        # (each node at its own phase: nodes started together do not all prove at once)
        phase = int.from_bytes(own.node[:4], "big")
        if self._proof and (self._proof_pushes > 0 or (self._pushes + phase) % PROOF_EVERY == 0):
            self._proof_pushes -= 1
            own = dataclasses.replace(own, proof=self._proof)
        room = MAX_DATAGRAM - SEAL_OVERHEAD - 60 - _DANCE_BYTES - len(own.proof)
        relays = [s for s in self.view.values() if s.relays_left > 0 and s.hops > 1]
        relays.sort(key=lambda s: -s.at)
        carried = [HopDance(dance=own, hops=self.config.hops)]
        for seen in relays:
            proof = seen.proof if seen.proof_relays > 0 else b""
            room -= _DANCE_BYTES + len(proof)
            if room < 0 or len(carried) == _MAX_CARRIED:
                break
            seen.relays_left -= 1
            relayed = seen.dance
            if proof:
                seen.proof_relays -= 1
                relayed = dataclasses.replace(relayed, proof=proof)
            carried.append(HopDance(dance=relayed, hops=seen.hops - 1))
        msg = WaggleMsg(dances=tuple(carried))
        for addr in targets.values():
            env = Envelope(sender=self.dance.node, msg_id=self._rng.getrandbits(64), message=msg)
            self._outbox.append((addr, env))
        if self._proofs_for:
            self._send_proofs({n: targets[n] for n in self._proofs_for if n in targets})
            self._proofs_for = {}

    def _send_proofs(self, to: dict[bytes, Addr]) -> None:
        """The dances we relay, with the proofs of their adverts, to new links."""
        proven = [
            dataclasses.replace(seen.dance, proof=seen.proof)
            for seen in sorted(self.view.values(), key=lambda s: -s.at)
            if seen.proof and seen.hops > 1
        ]
        per_msg = (MAX_DATAGRAM - SEAL_OVERHEAD - 60) // (_DANCE_BYTES + PROOF_BYTES)
        for i in range(0, min(len(proven), _MAX_CARRIED), per_msg):
            msg = WaggleMsg(
                dances=tuple(HopDance(dance=d, hops=1) for d in proven[i : i + per_msg])
            )
            for addr in to.values():
                env = Envelope(
                    sender=self.dance.node, msg_id=self._rng.getrandbits(64), message=msg
                )
                self._outbox.append((addr, env))
