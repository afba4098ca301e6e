"""One node's place in the honeycomb: its links, failure detection and waggle (sans-IO).

``Comb`` composes the two protocol pieces over the same links:

* :class:`~hexamesh.comb.swim.Swim` watches the links and spreads membership
  news mesh-wide (links and shortcuts carry it);
* :class:`~hexamesh.comb.waggle.Waggle` pushes this node's dance to its links
  every heartbeat and relays its neighbours' dances one ring further.

Every waggle push from a link counts as proof of life for SWIM, so in steady
state a node sends one push per comb link per heartbeat and no probes at all;
SWIM probes only links that went quiet. The links come from the cell map: the
six comb links of ``cells.comb_links`` (watched, and danced to) plus a few
shortcuts chosen by the caller from its Kademlia table (told membership news
only, which brings a flood across the comb to O(log N) hops). When a link
dies the core relinks around it on its own.

The cell map (cell -> owner, owner -> address) is filled from outside
(``set_map``, ``learn``: what the DHT and other nodes' views say) and by the
core itself from every dance it hears, which carries the dancer's cell. A
dance that puts another node in our own cell is a contested claim: the core
hands out ``CellContested`` and the agent settles it through the DHT.

Addresses: what a node says of its own address (its dance, its claims) may
be out of date, since a node learns its address from its peers
(``net.address``). The address its comb messages come *from* is where it is
reached, so once a known node is heard from an address other than the one
held, that one is kept and preferred to what dances say (``_reached_at``).
When our own address changes (``readdress``) we tell every live member we
know directly: a node whose first address was wrong had no links to dance to.

``ViewReq``/``ViewReply`` let anyone holding the swarm key ask a node what it
sees: its dance, the dances in its view, and the cells it knows. A joiner asks
before choosing a cell; ``hexamesh peers`` asks to draw the map. A reply comes
out as ``ViewArrived`` only if it answers a request of ours.

What the core hands out (``events``): SWIM's membership changes, and
``ViewArrived``, ``CellContested`` and ``ShortcutLost`` (a shortcut died or
became a comb link: the agent draws another). SWIM's orders (relink, tell a
suspect's other watchers, forget a dead member's cell) it carries out itself.

A node starts *unplaced* (no cell yet: no links, no dances) until ``place``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from hexamesh.comb.advert import Signer
from hexamesh.comb.cells import comb_links
from hexamesh.comb.swim import (
    SWIM_MESSAGES,
    Forgotten,
    Gossip,
    MembershipEvent,
    MemberState,
    MemberUpdate,
    Relink,
    Swim,
    SwimConfig,
    TellWatchers,
)
from hexamesh.comb.waggle import Dance, Waggle, WaggleConfig, WaggleMsg
from hexamesh.hexgrid import ORIGIN, Hex, distance
from hexamesh.hexgrid import neighbours as adjacent_cells
from hexamesh.identity import NODE_ID_BYTES
from hexamesh.net.base import Addr
from hexamesh.wire import MAX_ITEMS, Envelope, Len, MaxLen, Message, Struct, message, struct

__all__ = [
    "COMB_MESSAGES",
    "MAX_VIEW_CELLS",
    "CellEntry",
    "Comb",
    "CombConfig",
    "ViewReply",
    "ViewReq",
]

# Cells (and deaths) in one ViewReply: the wire's bound on any array, so that a
# reply always decodes. A larger map sends the cells nearest the centre (where a
# joiner looks for holes first) and the latest deaths; a ViewReply of a full
# map took 4,096 and no joiner could read it past 1,024.
MAX_VIEW_CELLS = MAX_ITEMS
READDRESS_TELLS = 256  # live members told our new address directly (links first, then any)
MAX_VIEW_DANCES = 512  # dances in one ViewReply


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class CellEntry(Struct):
    node: Annotated[bytes, Len(NODE_ID_BYTES)]
    host: Annotated[str, MaxLen(64)]
    port: int
    q: int
    r: int


@message(0x0208)
@dataclass(frozen=True, slots=True, kw_only=True)
class ViewReq(Message):
    """What do you see? (answered with a ``ViewReply`` of the same msg_id)."""


@message(0x0209)
@dataclass(frozen=True, slots=True, kw_only=True)
class ViewReply(Message):
    placed: bool  # False: the node has no cell yet, ``dances`` holds only its view
    dances: Annotated[tuple[Dance, ...], MaxLen(MAX_VIEW_DANCES)]  # its own first, if placed
    cells: Annotated[tuple[CellEntry, ...], MaxLen(MAX_VIEW_CELLS)]  # live cells it knows
    dead: Annotated[tuple[Annotated[bytes, Len(NODE_ID_BYTES)], ...], MaxLen(MAX_VIEW_CELLS)]


COMB_MESSAGES: tuple[type[Message], ...] = (*SWIM_MESSAGES, WaggleMsg, ViewReq, ViewReply)


@dataclass(frozen=True, kw_only=True)
class CombConfig:
    swim: SwimConfig = field(default_factory=SwimConfig)
    waggle: WaggleConfig = field(default_factory=WaggleConfig)
    look_past_holes: int = 4  # rings a node looks across holes for a link in each direction
    max_view_requests: int = 64  # our ViewReqs awaiting a reply; the oldest is forgotten


@dataclass(frozen=True, slots=True)
class ViewArrived:
    """The answer to our ``request_view`` of id ``msg_id``."""

    msg_id: int
    reply: ViewReply


@dataclass(frozen=True, slots=True)
class CellContested:
    """Another node dances in our cell: the DHT record decides who keeps it."""

    cell: Hex


@dataclass(frozen=True, slots=True)
class ShortcutLost:
    """A shortcut died or became a comb link: one far contact fewer."""

    node: bytes


CombEvent = MembershipEvent | ViewArrived | CellContested | ShortcutLost


class _LiveCells(Mapping[Hex, bytes]):
    """The cell map without the owners we know are dead, and with us in our
    cell: a lazy view, so a relink costs O(look_past_holes^2) lookups rather
    than a copy of the whole map (10,000 cells at N = 10,000)."""

    __slots__ = ("_me", "_my_cell", "_owners", "_state_of")

    def __init__(
        self,
        owners: Mapping[Hex, bytes],
        my_cell: Hex,
        me: bytes,
        state_of: Callable[[bytes], MemberState | None],
    ) -> None:
        self._owners = owners
        self._my_cell = my_cell
        self._me = me
        self._state_of = state_of

    def __getitem__(self, cell: object) -> bytes:
        if cell == self._my_cell:
            return self._me
        owner = self._owners[cell]  # type: ignore[index]
        if self._state_of(owner) is MemberState.DEAD:
            raise KeyError(cell)
        return owner

    def __contains__(self, cell: object) -> bool:
        try:
            self[cell]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[Hex]:
        yield self._my_cell
        for cell in self._owners:
            if cell != self._my_cell and cell in self:
                yield cell

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Comb:
    def __init__(
        self,
        dance: Dance,
        config: CombConfig,
        rng: random.Random,
        now: float,
        *,
        placed: bool = True,
        signer: Signer | None = None,
    ) -> None:
        self.config = config
        self.node = dance.node
        self.addr: Addr = (dance.host, dance.port)
        self.placed = placed
        self.cell = Hex(dance.q, dance.r)
        self._rng = rng
        # our incarnation when we last ran, if the caller kept it (the agent does)
        self.swim = Swim(
            dance.node,
            self.addr,
            config.swim,
            rng,
            now,
            incarnation=dance.incarnation,
            signer=signer,
        )
        self.waggle = Waggle(dance, config.waggle, rng, now, signer=signer, dancing=placed)
        self.comb_links: dict[int, bytes] = {}
        self.shortcuts: list[bytes] = []
        self.owners: MutableMapping[Hex, bytes] = {}
        self.addrs: MutableMapping[bytes, Addr] = {}
        self._cell_of: dict[bytes, Hex] = {}  # learned from dances: who moved
        self._reached_at: dict[bytes, Addr] = {}  # where known nodes' messages came from
        self._contested: Hex | None = None  # our cell, danced by someone else too (told once)
        self._asked: dict[int, None] = {}  # our ViewReqs awaiting a reply, oldest first
        self._events: list[ViewArrived | CellContested | ShortcutLost] = []
        self.views_unasked = 0  # ViewReplies that answered no request of ours (dropped)
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._incarnation = dance.incarnation  # the last one our watchers were told about
        self.waggle.dead = self.swim.dead

    # -- the map ----------------------------------------------------------

    def set_map(
        self,
        owners: MutableMapping[Hex, bytes],
        addrs: MutableMapping[bytes, Addr],
        now: float,
        shortcuts: list[bytes] | None = None,
    ) -> None:
        """Use this cell map (kept, not copied: its owner may change it and call
        ``relink``) and these shortcuts; links follow from it."""
        self.owners = owners
        self.addrs = addrs
        if shortcuts is not None:
            self.set_shortcuts(shortcuts, now, relink=False)
        self.relink(now)

    def set_shortcuts(self, shortcuts: list[bytes], now: float, *, relink: bool = True) -> None:
        new = [s for s in dict.fromkeys(shortcuts) if s != self.node]
        changed = new != self.shortcuts
        self.shortcuts = new
        if relink and changed:  # a small swarm redraws the same few every second
            self.relink(now)

    def learn(self, node: bytes, addr: Addr, cell: Hex, now: float) -> bool:
        """``node`` (at ``addr``) owns ``cell``; True if the map changed."""
        if node == self.node:
            return False
        addr = self._reached_at.get(node, addr)  # what we see beats what it says
        changed = self.addrs.get(node) != addr  # it moved host: links must dial the new one
        self.addrs[node] = addr
        old = self._cell_of.get(node)
        changed |= self.owners.get(cell) != node
        if old is not None and old != cell and self.owners.get(old) == node:
            del self.owners[old]  # it moved (lost a contested cell and claimed another)
            changed = True
        self._cell_of[node] = cell
        if self.placed and cell == self.cell:
            if self._contested is None:  # not in our map: the DHT record decides
                self._contested = cell
                self._events.append(CellContested(cell))
            return changed
        self.owners[cell] = node
        return changed

    def readdress(self, addr: Addr, now: float) -> None:
        """Peers reach us at ``addr`` from now on (``net.address``): SWIM
        announces it with a higher incarnation, our dance carries it, and every
        live member we know hears it from us (at most ``READDRESS_TELLS``)."""
        self.addr = addr
        self.swim.readdress(addr, now)
        self.waggle.update(now, host=addr[0], port=addr[1])
        self._tell_watchers(now)
        # (with our proof of it: whoever we tell passes it on)
        update = self.swim.own_update()
        members = self.swim.members
        first = [n for n in self.swim.spread if n in members]
        rest = [n for n in members if n not in set(first)]
        live = [
            members[n].addr for n in [*first, *rest] if members[n].state is not MemberState.DEAD
        ]
        for to in live[:READDRESS_TELLS]:
            msg = Gossip(updates=(update,))
            env = Envelope(sender=self.node, msg_id=self._rng.getrandbits(64), message=msg)
            self._outbox.append((to, env))

    def _heard_from(self, node: bytes, addr: Addr) -> bool:
        """A comb message of ``node``'s came from ``addr``: where it is reached.
        True if that is news (the links must dial it there)."""
        if node == self.node or node not in self.addrs or self.addrs[node] == addr:
            return False
        self._reached_at[node] = addr
        self.addrs[node] = addr
        self.swim.reached_at(node, addr)
        return True

    def place(self, cell: Hex, now: float) -> None:
        """Take ``cell`` (claimed by the caller); starts linking and dancing."""
        if self.owners.get(self.cell) == self.node:
            del self.owners[self.cell]
        self.cell = cell
        self.placed = True
        self._contested = None
        self.owners.pop(cell, None)
        self.waggle.update(now, q=cell.q, r=cell.r)
        self.waggle.start(now)
        self.relink(now)

    def settling(self) -> None:
        """The agent is settling our cell's claim: a contest after this is news again."""
        self._contested = None

    def relink(self, now: float) -> None:
        """Recompute the links from the map, skipping nodes we know are dead."""
        if not self.placed:
            return
        state_of = self.swim.state_of
        live = _LiveCells(self.owners, self.cell, self.node, state_of)
        self.comb_links = comb_links(self.cell, live, self.config.look_past_holes)
        # a shortcut that became a comb link (it took a cell next to ours) is one
        # far contact fewer: drop it, and the service draws another
        linked = set(self.comb_links.values())
        kept = [
            s for s in self.shortcuts if s not in linked and state_of(s) is not MemberState.DEAD
        ]
        if len(kept) < len(self.shortcuts):
            self._events.extend(ShortcutLost(s) for s in self.shortcuts if s not in kept)
        self.shortcuts = kept
        addrs = self.addrs
        watched = list(self.comb_links.values())
        behind = self._behind_suspects(watched)
        for node in [*watched, *self.shortcuts, *behind]:
            if state_of(node) is None and node in addrs:
                self.swim.add_member(node, addrs[node], 0, now)
        self.swim.set_links([*watched, *behind], now, spread=self.shortcuts)
        # Dances go to comb links only: shortcuts carry membership news, not load.
        self.waggle.set_links({n: addrs[n] for n in watched if n in addrs})

    def _take_orders(self, now: float) -> bool:
        """Carry out SWIM's orders; True if it asked for a relink."""
        relink = False
        for order in self.swim.orders():
            if isinstance(order, Forgotten):
                self._forget(order.node)
            elif isinstance(order, TellWatchers):
                self._tell_other_watchers(order)
            elif isinstance(order, Relink):
                relink = True
        return relink

    def _forget(self, node: bytes) -> None:
        """A dead member the failure detector forgot (``Swim._reap``): its cell
        and address go too, or a relink would add it back as a member. (Its
        dance left the view long before: views drop a dead node's dance.)"""
        cell = self._cell_of.pop(node, None)
        if cell is not None and self.owners.get(cell) == node:
            del self.owners[cell]
        self.addrs.pop(node, None)
        self._reached_at.pop(node, None)

    def _tell_other_watchers(self, order: TellWatchers) -> None:
        for addr in self._other_watchers(order.node):
            if addr not in order.skip and addr != self.addr:
                msg = Gossip(updates=(order.accusation,))
                env = Envelope(sender=self.node, msg_id=self._rng.getrandbits(64), message=msg)
                self._outbox.append((addr, env))

    def _behind_suspects(self, links: list[bytes]) -> list[bytes]:
        """Who our links would be if the suspected ones died, to watch (probe and
        judge, not dance to) from the suspicion on. In a cluster of victims the
        ones behind a suspect have no live watcher: their first probe waited for
        the verdicts on their neighbours and our relink after them, ~1.5 s."""
        state_of = self.swim.state_of
        gone = {n for n in links if state_of(n) is MemberState.SUSPECT}
        if not gone:
            return []

        def without_suspects(node: bytes) -> MemberState | None:
            return MemberState.DEAD if node in gone else state_of(node)

        past = _LiveCells(self.owners, self.cell, self.node, without_suspects)
        beyond = comb_links(self.cell, past, self.config.look_past_holes).values()
        return [n for n in dict.fromkeys(beyond) if n not in links]

    def _other_watchers(self, node: bytes) -> list[Addr]:
        """The live owners of the cells around ``node``'s cell: its other watchers."""
        cell = self._cell_of.get(node)
        if cell is None:
            return []
        out = []
        for near in adjacent_cells(cell):
            owner = self.owners.get(near)
            if (
                owner is not None
                and owner != self.node
                and owner in self.addrs
                and self.swim.state_of(owner) is not MemberState.DEAD
            ):
                out.append(self.addrs[owner])
        return out

    def _back_if_refuted(self, dance: Dance, now: float) -> None:
        """A dance (first-hand or relayed) from a node we hold suspect or dead at
        a lower incarnation: it refuted, and we missed the news (we were cut off
        from everyone who spread it). SWIM's rule, alive at a higher incarnation
        wins, applied to the dance's incarnation: after a partition healed, nodes
        that heard a returned node's dances through a common neighbour held it
        dead until a push-pull, up to 45 s."""
        member = self.swim.members.get(dance.node)
        if (
            member is not None
            and member.state is not MemberState.ALIVE
            and dance.incarnation > member.incarnation
        ):
            self.swim.add_member(dance.node, (dance.host, dance.port), dance.incarnation, now)

    def _tell_watchers(self, now: float) -> None:
        """We refuted a suspicion: tell everyone who dances to us at once, not
        only our own links (across holes a watcher may not be one of them), and
        dance the new incarnation (a node that missed the refutation learns it
        from the dance)."""
        if self.swim.incarnation == self._incarnation or self.swim.left:
            return  # (leaving raised it too: that is no refutation)
        self._incarnation = self.swim.incarnation
        self.waggle.update(now, incarnation=self.swim.incarnation)
        update = MemberUpdate(
            node=self.node,
            host=self.addr[0],
            port=self.addr[1],
            incarnation=self.swim.incarnation,
            state=MemberState.ALIVE,
            by=self.node,
        )
        linked = set(self.swim.spread)
        for node, addr in self.waggle.dancers().items():
            if node not in linked:
                msg = Gossip(updates=(update,))
                self._outbox.append(
                    (
                        addr,
                        Envelope(sender=self.node, msg_id=self._rng.getrandbits(64), message=msg),
                    )
                )

    # -- asking others ----------------------------------------------------

    def request_view(self, addr: Addr, now: float) -> int:
        """Ask the node at ``addr`` for its view; the answer comes out as
        ``ViewArrived`` with the id returned."""
        msg_id = self._rng.getrandbits(64)
        self._asked[msg_id] = None
        while len(self._asked) > self.config.max_view_requests:
            del self._asked[next(iter(self._asked))]
        self._outbox.append((addr, Envelope(sender=self.node, msg_id=msg_id, message=ViewReq())))
        return msg_id

    def view_reply(self) -> ViewReply:
        """What we see: our dance, our view, the live cells we know, the dead."""
        dances = [s.dance for s in self.waggle.view.values()]
        if self.placed:
            dances.insert(0, self.waggle.dance)
        state_of = self.swim.state_of
        live = [
            (c, n)
            for c, n in self.owners.items()
            if n in self.addrs and state_of(n) is not MemberState.DEAD
        ]
        if len(live) >= MAX_VIEW_CELLS:
            live = heapq.nsmallest(MAX_VIEW_CELLS - 1, live, key=lambda cn: distance(ORIGIN, cn[0]))
        cells = [
            CellEntry(node=n, host=self.addrs[n][0], port=self.addrs[n][1], q=c.q, r=c.r)
            for c, n in live
        ]
        if self.placed:
            cells.insert(
                0,
                CellEntry(
                    node=self.node,
                    host=self.addr[0],
                    port=self.addr[1],
                    q=self.cell.q,
                    r=self.cell.r,
                ),
            )
        held = self.swim.members
        dead = heapq.nlargest(MAX_VIEW_CELLS, self.swim.dead, key=lambda n: held[n].since)
        return ViewReply(
            placed=self.placed,
            dances=tuple(dances[:MAX_VIEW_DANCES]),
            cells=tuple(cells[:MAX_VIEW_CELLS]),
            dead=tuple(dead[:MAX_VIEW_CELLS]),
        )

    # -- the view ---------------------------------------------------------

    def neighbours(self) -> list[bytes]:
        return list(dict.fromkeys(self.comb_links.values()))

    @property
    def dance(self) -> Dance:
        """Our own dance, as our links see it."""
        return self.waggle.dance

    def update_dance(self, now: float, **changes: object) -> None:
        self.waggle.update(now, **changes)

    def is_dead(self, node: bytes) -> bool:
        """Does the failure detector hold ``node`` dead?"""
        return self.swim.state_of(node) is MemberState.DEAD

    def knows(self, node: bytes) -> bool:
        """Is ``node`` us or a member we hold (heard from, or of, in the swarm)?"""
        return node == self.node or node in self.swim.members

    def is_live_member(self, node: bytes) -> bool:
        """Is ``node`` us, a member we hold or a cell's owner in our map, and
        not held dead? (A key that never joined is none of these.)"""
        return (self.knows(node) or node in self.addrs) and not self.is_dead(node)

    def members(self) -> dict[bytes, MemberState]:
        """Every member held, and its state (a copy)."""
        return {n: m.state for n, m in self.swim.members.items()}

    def told_news(self) -> list[bytes]:
        """The links and shortcuts news goes to (comb links first)."""
        return list(self.swim.spread)

    def view(self) -> dict[bytes, Dance]:
        """The dances held of other nodes (the two-ring view), dead or not."""
        return {n: s.dance for n, s in self.waggle.view.items()}

    @property
    def updates_refused(self) -> int:
        """Membership news refused (out of bounds, over the hearsay cap)."""
        return self.swim.refused

    def unproven(self) -> dict[str, int]:
        """Others' self-claims relayed without their node's proof, dropped: by kind."""
        return {"dance": self.waggle.unproven, "refutation": self.swim.unproven}

    def leave(self, now: float) -> None:
        """Leave gracefully (``Swim.leave``)."""
        self.swim.leave(now)

    def state_of(self, node: bytes) -> Dance | None:
        if node == self.node:
            return self.waggle.dance
        seen = self.waggle.view.get(node)
        return seen.dance if seen else None

    def live_dances(self) -> dict[bytes, Dance]:
        """Our dance and those of the live peers in our neighbourhood view (what
        placement votes weigh)."""
        state_of = self.swim.state_of
        out = {
            n: s.dance for n, s in self.waggle.view.items() if state_of(n) is not MemberState.DEAD
        }
        out[self.node] = self.waggle.dance
        return out

    def peers_with(self, model: str) -> list[Dance]:
        """Live peers in our neighbourhood view that hold ``model``, least loaded first."""
        out = [
            s.dance
            for n, s in self.waggle.view.items()
            if model in s.dance.models and self.swim.state_of(n) is not MemberState.DEAD
        ]
        return sorted(out, key=lambda d: d.load)

    def events(self) -> Sequence[CombEvent]:
        """Membership changes, view answers, contests and lost shortcuts since the last call."""
        theirs = self.swim.events()
        if not self._events:  # after most steps: no allocation
            return theirs
        ours, self._events = self._events, []
        return [*theirs, *ours]

    # -- the Core interface -----------------------------------------------

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        moved = self._heard_from(env.sender, sender)
        if isinstance(msg, WaggleMsg):
            self.swim.heard(env.sender, now)
            if self.swim.state_of(env.sender) is MemberState.DEAD:
                self.swim.tell_dead(env.sender, sender, now)  # so it can rejoin
            for dance in self.waggle.receive(msg, now, sender, env.sender):
                moved |= self.learn(
                    dance.node, (dance.host, dance.port), Hex(dance.q, dance.r), now
                )
                if dance.incarnation:
                    self._back_if_refuted(dance, now)
            if self._take_orders(now) or moved:
                self.relink(now)
        elif isinstance(msg, ViewReq):
            self._outbox.append(
                (sender, Envelope(sender=self.node, msg_id=env.msg_id, message=self.view_reply()))
            )
            if moved:
                self.relink(now)
        elif isinstance(msg, ViewReply):
            if env.msg_id in self._asked:
                del self._asked[env.msg_id]
                self._events.append(ViewArrived(env.msg_id, msg))
            else:
                self.views_unasked += 1  # late, duplicated, or nobody asked
            if moved:
                self.relink(now)
        else:
            self.swim.receive(env, sender, now)
            if self._take_orders(now) or moved:
                self.relink(now)
            self._tell_watchers(now)

    def handle_timer(self, now: float) -> None:
        due = self.swim.next_timer()
        if due is not None and due <= now:
            self.swim.handle_timer(now)
            if self._take_orders(now):
                self.relink(now)
        if self.waggle.next_timer() <= now:
            self.waggle.handle_timer(now)

    def next_timer(self) -> float | None:
        swim = self.swim.next_timer()
        wag = self.waggle.next_timer()
        return wag if swim is None else min(swim, wag)

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        # Called after every event, and most leave two of the three empty.
        out = self._outbox
        if out:
            self._outbox = []
        swim = self.swim.outbox()
        wag = self.waggle.outbox()
        if swim or wag:
            return [*out, *swim, *wag]
        return out
