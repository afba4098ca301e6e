"""The honeycomb in a running agent: claim a cell through the DHT, keep it, and
offer the comb to the rest of the agent (trio).

Theory of operation
-------------------
*Joining.* A joiner asks its seeds what they see (``ViewReq``: their dance,
their view, the live cells they know), then asks a few of the owners it
learned, timing each answer: that is its RTT to them (the lower of two
samples, so one late wake-up on a loaded host does not decide where a node
lives). ``cells.choose_cell``
picks a hole nearest the centre, else the free cell next to the lowest-RTT
owner. The founder of a swarm takes the centre.

*Claiming.* A cell is a DHT record ``cell:q,r`` (value: the owner's address),
signed by the owner and leased: ``CELL_TTL``, renewed by the DHT core at half
of it, so a dead node's cell frees itself within one lease. The claim's
sequence number is its claim time in milliseconds. A claimant first reads the
key (a live record of someone else: taken, choose again), then stores its own
at the k closest nodes (each holder refuses a second owner: put-if-absent),
then reads back every replica it can reach. If replicas disagree (two
claims raced), the older claim wins, ties to the lower node id
(``dht.claim.holder_of``); every claimant applies the same rule to the same records,
so they agree without talking, and the loser chooses again.

*Keeping it.* A dance that shows another node in our cell (a claim that raced
past the read-back, or a partition that healed) makes the core hand out
``CellContested``; the owner is then looked up in the DHT the same way and
the loser moves. Every ``CLAIM_CHECK`` the owner also re-reads its record.

*Shortcuts* are a few random contacts from the Kademlia table (random
targets, their closest known node), refreshed every ``SHORTCUT_REFRESH`` and
when one dies.

*Leaving.* A graceful leave tells every link at once (SWIM ``leave``) and
replaces the cell record by one that expires in a second.

*Events.* ``run`` takes the comb core's events from the driver's channel:
membership changes go to the log and to every ``subscribe``r, view answers
to the ``ask_view`` waiting for them, contests and lost shortcuts wake the
upkeep task. Nothing polls the core.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping

import msgpack
import trio

from hexamesh.comb.cells import choose_cell
from hexamesh.comb.core import (
    CellContested,
    Comb,
    CombConfig,
    CombEvent,
    ShortcutLost,
    ViewArrived,
    ViewReply,
)
from hexamesh.comb.swim import MembershipEvent, MemberState
from hexamesh.comb.waggle import Dance
from hexamesh.dht.claim import addr_value, claim, holder_of, release
from hexamesh.dht.providers import provider_value
from hexamesh.dht.service import Dht, DhtError
from hexamesh.hexgrid import ORIGIN, Hex
from hexamesh.identity import Identity, short_id
from hexamesh.net.base import Addr, format_addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.udp import open_udp_transport
from hexamesh.peerauth import Authenticator
from hexamesh.wire import Codec, KeyRing

__all__ = ["CELL_TTL", "ClaimError", "Honeycomb", "cell_key", "fetch_view"]

log = logging.getLogger(__name__)

CELL_TTL = 60.0  # s; a cell's lease: a dead owner's cell frees itself within this
CLAIM_ATTEMPTS = 16  # cells tried before a join gives up (each try is 2-3 DHT operations)
CLAIM_CHECK = 30.0  # s between re-reads of our own cell record
VIEW_TIMEOUT = 2.0  # s to wait for a ViewReply
RTT_PEERS = 6  # owners asked for their view (and timed) while joining
# samples per owner, the lowest kept: on a loaded host one sample can be late by
# a scheduler slice (seen: 15 ms against 4 ms), enough to pull a joiner off-centre
RTT_SAMPLES = 2
SHORTCUTS = 2  # long links from the Kademlia table
SHORTCUT_REFRESH = 60.0  # s between shortcut draws
MODEL_TTL = 300.0  # s; a model:<name> provider entry's lease (renewed at half)
MODEL_INDEX = "*"  # model:* has one entry per serving node: [host, port, [models]]
SHORTCUT_RETRY = 1.0  # s before a redraw while we have fewer shortcuts than SHORTCUTS
# A redraw that still leaves us short doubles the wait (up to SHORTCUT_REFRESH);
# a join heard resets it. In a swarm so small that every node is a comb link
# there is nothing to draw, and a redraw each second kept idle agents waking.
EVENT_BUFFER = 256  # membership events a slow subscriber may lag behind before it misses some


class ClaimError(Exception):
    """No cell could be claimed (the DHT was unreachable, or every try lost)."""


def cell_key(cell: Hex) -> str:
    return f"cell:{cell.q},{cell.r}"


class Honeycomb:
    """The comb for the rest of the agent: ``neighbours``, ``peers_with``,
    ``state_of``, ``subscribe`` (membership events) and the cell's upkeep."""

    def __init__(
        self,
        comb: Comb,
        driver: CoreDriver,
        dht: Dht,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.comb = comb
        self.driver = driver
        self.dht = dht
        self._clock = clock
        self._rng = rng or random.Random()
        self._sources: dict[str, str] = {}  # models we serve -> what they were loaded from
        self._events = driver.subscribe(MembershipEvent, ViewArrived, CellContested, ShortcutLost)
        self._subscribers: list[trio.MemorySendChannel[MembershipEvent]] = []
        self.events_dropped = 0
        self._views: dict[int, _ViewWait] = {}  # our ViewReqs' ids -> who waits
        self._attention = trio.Event()  # set when the upkeep task has work
        self._contested = False  # a CellContested since the last settling
        self._short = False  # a shortcut was lost since the last draw filled every slot
        self._draw_misses = 0  # draws in a row that left us short of shortcuts
        self._filled = False  # the last draw filled every slot

    # -- the view ---------------------------------------------------------

    @property
    def node(self) -> bytes:
        return self.comb.node

    @property
    def cell(self) -> Hex | None:
        return self.comb.cell if self.comb.placed else None

    def neighbours(self) -> list[bytes]:
        return self.comb.neighbours()

    def is_dead(self, node: bytes) -> bool:
        return self.comb.is_dead(node)

    def members(self) -> dict[bytes, MemberState]:
        return self.comb.members()

    def address_of(self, node: bytes) -> Addr | None:
        """Where a member held is reached, None for one not held."""
        member = self.comb.swim.members.get(node)
        return None if member is None else member.addr

    def is_member(self, node: bytes) -> bool:
        """Is ``node`` known to the comb (a key that never joined is not)?"""
        return self.comb.knows(node)

    @property
    def dance(self) -> Dance:
        return self.comb.dance

    def update_dance(self, **changes: object) -> None:
        """Change our dance (load, status, uptime...); links hear it soon."""
        self.comb.update_dance(self._clock(), **changes)
        self.driver.poke()

    def view(self) -> dict[bytes, Dance]:
        return self.comb.view()

    @property
    def updates_refused(self) -> int:
        return self.comb.updates_refused

    def unproven(self) -> dict[str, int]:
        return self.comb.unproven()

    def peers_with(self, model: str) -> list[Dance]:
        return self.comb.peers_with(model)

    def state_of(self, node: bytes) -> Dance | None:
        return self.comb.state_of(node)

    def subscribe(self, buffer: int = EVENT_BUFFER) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """A channel of membership changes (alive, suspect, dead) from now on;
        what does not fit in ``buffer`` is dropped (counted in ``events_dropped``)."""
        send, receive = trio.open_memory_channel[MembershipEvent](buffer)
        self._subscribers.append(send)
        return receive

    def _addr_value(self) -> bytes:
        """Our address as cell and model records carry it."""
        return addr_value(self.comb.addr)

    # -- asking other nodes -----------------------------------------------

    async def ask_view(self, addr: Addr, timeout: float = VIEW_TIMEOUT) -> tuple[ViewReply, float]:
        """The view of the node at ``addr`` and the round-trip time; raises TimeoutError."""
        start = trio.current_time()
        msg_id = self.comb.request_view(addr, self._clock())
        waiting = self._views[msg_id] = _ViewWait()
        self.driver.poke()
        try:
            with trio.move_on_after(timeout):
                await waiting.done.wait()
        finally:
            self._views.pop(msg_id, None)
        if waiting.reply is None:
            raise _no_view(addr, timeout)
        return waiting.reply, trio.current_time() - start

    def _merge(self, reply: ViewReply) -> bytes | None:
        """Learn the cells a view lists; returns the replying node if placed."""
        now = self._clock()
        dead = set(reply.dead)
        for entry in reply.cells:
            if entry.node in dead or entry.node == self.node:
                continue
            self.comb.learn(entry.node, (entry.host, entry.port), Hex(entry.q, entry.r), now)
        return reply.cells[0].node if reply.placed and reply.cells else None

    # -- joining and claiming ---------------------------------------------

    async def join(self, seeds: list[Addr], *, founder: bool) -> Hex:
        """Choose and claim a cell, then start linking; returns the cell."""
        rtt: dict[bytes, float] = {}
        if not founder:
            await self._survey(seeds, rtt)
        cell = await self._claim_some(rtt, first=ORIGIN if founder else None)
        self.comb.place(cell, self._clock())
        self.draw_shortcuts()
        self.driver.poke()
        self._attention.set()  # the upkeep's clocks start now
        log.info(
            "took cell %s with %d neighbours (%d cells known, RTT to %d owners %s ms)",
            cell,
            len(self.neighbours()),
            len(self.comb.owners),
            len(rtt),
            "/".join(f"{t * 1e3:.1f}" for t in sorted(rtt.values())),
        )
        return cell

    async def _survey(self, seeds: list[Addr], rtt: dict[bytes, float]) -> None:
        """Views from the seeds, then from a few owners they name (timed: RTT)."""
        for addr in seeds:
            try:
                reply, took = await self.ask_view(addr)
            except TimeoutError as e:
                log.info("%s", e)
                continue
            node = self._merge(reply)
            if node is not None:
                rtt[node] = took
        owners = [n for n in self.comb.owners.values() if n not in rtt]
        self._rng.shuffle(owners)
        timed = [(n, RTT_SAMPLES - 1) for n in rtt] + [(n, RTT_SAMPLES) for n in owners[:RTT_PEERS]]
        async with trio.open_nursery() as nursery:
            for node, samples in timed:
                nursery.start_soon(self._time_one, node, samples, rtt)

    async def _time_one(self, node: bytes, samples: int, rtt: dict[bytes, float]) -> None:
        """Ask ``node`` for its view ``samples`` times in turn; keep the lowest RTT."""
        for _ in range(samples):
            try:
                reply, took = await self.ask_view(self.comb.addrs[node])
            except TimeoutError:
                return
            self._merge(reply)
            rtt[node] = min(took, rtt.get(node, took))

    async def _claim_some(self, rtt: dict[bytes, float], first: Hex | None = None) -> Hex:
        taken: dict[Hex, bytes] = {}  # cells found held while trying (maybe by the dead)
        for _ in range(CLAIM_ATTEMPTS):
            owners = {c: n for c, n in self.comb.owners.items() if not self.comb.is_dead(n)}
            # A dead node's cell stays leased until its record expires: taken for now.
            cell = first or choose_cell({**owners, **taken}, rtt)
            first = None
            try:
                if await self.claim(cell):
                    return cell
            except DhtError as e:
                log.warning("claiming %s: %s", cell, e)
                await trio.sleep(1.0)
            taken.setdefault(cell, b"")
        raise ClaimError(f"no cell claimed after {CLAIM_ATTEMPTS} tries")

    async def claim(self, cell: Hex) -> bool:
        """Try to take ``cell``: read, put-if-absent, read back and settle."""
        now = self._clock()
        # Re-claiming our own cell after a restart starts a newer claim, which
        # replaces the old record.
        holder = await claim(
            self.dht, cell_key(cell), self._addr_value(), CELL_TTL, me=self.node, now=now
        )
        if holder is None:
            return True
        log.info("%s is %s's (older claim)", cell, short_id(holder.node))
        self.comb.learn(holder.node, holder.addr, cell, now)
        return False

    async def _settle_contest(self) -> None:
        """Someone dances in our cell: keep it if our claim wins, else move."""
        cell = self.comb.cell
        self.comb.settling()
        try:
            holder = holder_of(*await self.dht.claims(cell_key(cell)))
        except DhtError as e:
            log.warning("checking our cell %s: %s", cell, e)
            return
        if holder is None or holder.node == self.node:
            if holder is None:  # our record vanished (a long partition): claim it again
                await self.claim(cell)
            return
        log.warning("cell %s belongs to %s (older claim): moving", cell, short_id(holder.node))
        await self._release(cell_key(cell))
        self.comb.learn(holder.node, holder.addr, cell, self._clock())
        new = await self._claim_some({})
        self.comb.place(new, self._clock())
        self.driver.poke()

    # -- models -----------------------------------------------------------

    async def set_models(self, models: Mapping[str, str]) -> None:
        """Serve ``models`` (name -> source loaded) from now on: dance them
        (neighbours see at once) and announce each in the DHT as a
        ``model:<name>`` provider (``dht.providers``), renewed with the lease;
        models dropped are withdrawn (they expire within a lease)."""
        old = set(self.comb.dance.models)
        self._sources = dict(models)
        self.comb.update_dance(self._clock(), models=tuple(models))
        self.driver.poke()
        for model, source in models.items():
            if model not in old:
                await self.dht.announce(model, provider_value(self.comb.addr, source), MODEL_TTL)
        for model in old - set(models):
            self.dht.withdraw(f"model:{model}")
        # model:* lists every server's models, for a swarm-wide /v1/models
        index = msgpack.packb([self.comb.addr[0], self.comb.addr[1], list(models)])
        await self.dht.announce(MODEL_INDEX, bytes(index), MODEL_TTL)

    async def reannounce(self) -> None:
        """Our address changed (``agent.Readdress``): store our cell and model
        records again with the new one. The cell's claim keeps its age but for
        a millisecond (a record's sequence must grow with its value)."""
        if self.comb.placed:
            await self.dht.put(cell_key(self.comb.cell), self._addr_value(), CELL_TTL)
        models = self.comb.dance.models
        for model in models:
            source = self._sources.get(model, "")
            await self.dht.announce(model, provider_value(self.comb.addr, source), MODEL_TTL)
        if models:
            index = msgpack.packb([self.comb.addr[0], self.comb.addr[1], list(models)])
            await self.dht.announce(MODEL_INDEX, bytes(index), MODEL_TTL)

    # -- upkeep -----------------------------------------------------------

    def draw_shortcuts(self) -> None:
        """A few random far contacts from the Kademlia table as long links."""
        links = set(self.neighbours())
        picks: list[bytes] = []
        for _ in range(4 * SHORTCUTS):
            target = self._rng.getrandbits(160).to_bytes(20, "big")
            # The contact nearest a random id that may be a shortcut: not only
            # the nearest one, which in a small swarm was often a comb link or
            # a pick already, leaving a slot empty with candidates to spare.
            for contact in self.dht.closest(target, len(links) + len(picks) + 2):
                if (
                    contact.id != self.node
                    and contact.id not in links
                    and contact.id not in picks
                    # the DHT keeps a contact until its RPCs fail; the comb
                    # would drop a dead pick at once and leave the slot empty
                    and not self.comb.is_dead(contact.id)
                ):
                    self.comb.addrs.setdefault(contact.id, (contact.host, contact.port))
                    picks.append(contact.id)
                    break
            if len(picks) >= SHORTCUTS:
                break
        self.comb.set_shortcuts(picks, self._clock())
        self._filled = len(self.comb.shortcuts) >= SHORTCUTS
        self._draw_misses = 0 if self._filled else self._draw_misses + 1
        self.driver.poke()

    def _next_draw(self, last_draw: float) -> float:
        """When the shortcuts are due for a draw: sooner while we have too few."""
        if len(self.comb.shortcuts) >= SHORTCUTS:
            return last_draw + SHORTCUT_REFRESH
        backoff = SHORTCUT_RETRY * 2.0 ** min(max(self._draw_misses - 1, 0), 6)
        return last_draw + min(backoff, SHORTCUT_REFRESH)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take the core's events as they come, and keep the cell and the
        shortcuts (``_upkeep``); until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._upkeep)
            task_status.started()
            async for first in self._events:
                batch: list[CombEvent] = [first]
                while True:  # what else came in the same steps: one log summary
                    try:
                        batch.append(self._events.receive_nowait())
                    except trio.WouldBlock:
                        break
                self._take(batch)

    def _take(self, batch: list[CombEvent]) -> None:
        near = set(self.comb.told_news())
        others = 0
        for event in batch:
            if isinstance(event, ViewArrived):
                waiting = self._views.pop(event.msg_id, None)
                if waiting is not None:  # else its asker gave up
                    waiting.reply = event.reply
                    waiting.done.set()
            elif isinstance(event, CellContested):
                self._contested = True
                self._attention.set()
            elif isinstance(event, ShortcutLost):
                if self._filled:  # draw again now, not at the next refresh
                    self._short = True
                    self._attention.set()
            else:
                if event.state is MemberState.ALIVE:
                    self._draw_misses = 0  # a joiner (or a return): a new candidate
                # Our links' suspicions and deaths at INFO; joins, and news of
                # nodes further off, at DEBUG and counted: a mass failure (or a
                # flood of forged news) is thousands of them.
                here = event.node in near and event.state is not MemberState.ALIVE
                others += not here and event.state is not MemberState.ALIVE
                log.log(
                    logging.INFO if here else logging.DEBUG,
                    "peer %s at %s: %s (incarnation %d)",
                    short_id(event.node),
                    format_addr(event.addr),
                    event.state.name.lower(),
                    event.incarnation,
                )
                self._publish(event)
        if others:
            log.info("%d peers further off suspected or dead", others)

    async def _upkeep(self) -> None:
        """Settle contests and re-read our cell's record; draw shortcuts."""
        last_check = last_draw = trio.current_time()
        while True:
            wake_at = math.inf
            if self.comb.placed:
                wake_at = min(last_check + CLAIM_CHECK, self._next_draw(last_draw))
            with trio.move_on_at(wake_at):
                await self._attention.wait()
            self._attention = trio.Event()
            if not self.comb.placed:
                continue
            now = trio.current_time()
            if self._contested or now - last_check >= CLAIM_CHECK:
                self._contested = False
                last_check = now
                await self._settle_contest()
            if now >= self._next_draw(last_draw) or self._short:
                self._short = False
                last_draw = now
                self.draw_shortcuts()

    def _publish(self, event: MembershipEvent) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)

    async def leave(self) -> None:
        """Leave gracefully: links hear it at once, the cell frees within a second."""
        if not self.comb.placed:
            return
        self.comb.leave(self._clock())
        self.driver.poke()
        await self._release(cell_key(self.comb.cell))

    async def _release(self, key: str) -> None:
        await release(self.dht, key, self._addr_value())


class _ViewWait:
    """An ``ask_view`` waiting for its answer."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: ViewReply | None = None


def _no_view(addr: Addr, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"no view from {addr[0]}:{addr[1]} within {timeout:.1f} s (down, or another swarm key)"
    )


async def fetch_view(keyring: KeyRing, addr: Addr, timeout: float = VIEW_TIMEOUT) -> ViewReply:
    """Ask the agent at ``addr`` what it sees, as an outsider holding the swarm key
    (a throwaway identity, never placed); raises TimeoutError."""
    identity = Identity.generate()
    async with open_udp_transport("0.0.0.0", 0) as transport, trio.open_nursery() as nursery:
        comb = Comb(
            Dance.first(identity.node_id, ("0.0.0.0", 0), 0, 0),
            CombConfig(),
            random.Random(),
            time.time(),
            placed=False,
        )
        driver = CoreDriver(
            comb, transport, Codec(keyring, Authenticator(identity)), node_id=identity.node_id
        )
        arrived = driver.subscribe(ViewArrived)
        await nursery.start(driver.run)
        msg_id = comb.request_view(addr, time.time())
        driver.poke()
        reply: ViewReply | None = None
        with trio.move_on_after(timeout):
            async for event in arrived:
                if event.msg_id == msg_id:
                    reply = event.reply
                    break
        nursery.cancel_scope.cancel()
    if reply is None:  # raised here: out of the nursery, not wrapped in a group
        raise _no_view(addr, timeout)
    return reply
