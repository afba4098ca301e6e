"""The agent on the swarm: its cores behind one socket, its address, its join."""

from __future__ import annotations

import dataclasses
import logging
import socket as _stdlib_socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from random import Random

import trio

from hexamesh.agent.models import _room
from hexamesh.agent.process import wall_clock
from hexamesh.agent.status import RTT_REWRITE_INTERVAL, AgentStatus, _note_rtt
from hexamesh.comb.advert import NodeKeySigner
from hexamesh.comb.core import COMB_MESSAGES, Comb, CombConfig
from hexamesh.comb.service import ClaimError, Honeycomb
from hexamesh.comb.swim import MembershipEvent, MemberState
from hexamesh.comb.waggle import Dance
from hexamesh.config import AgentConfig
from hexamesh.dht.contact import Contact
from hexamesh.dht.core import DhtConfig, DhtCore
from hexamesh.dht.service import DHT_MESSAGES, Dht, DhtError
from hexamesh.identity import Identity
from hexamesh.logs import printable
from hexamesh.net.address import AddressBook, guess_host, is_wildcard, local_hosts
from hexamesh.net.base import Addr, format_addr, parse_addr
from hexamesh.net.mux import Mux
from hexamesh.net.rtt import Observation, Ping, Pong, RttConfig, RttProbe, RttSample
from hexamesh.placement.messages import PLACEMENT_MESSAGES
from hexamesh.placement.service import Placements
from hexamesh.placement.vote import PlacementConfig, Scouting
from hexamesh.revocation import REVOCATION_MESSAGES, Revocation, Revocations
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.serve.jobs import Jobs

log = logging.getLogger(__name__)

# s between RTT probes of each seed (the first at start): the RTT is only shown
# in agent.json, which takes a new one at most this often, and the comb's SWIM
# watches liveness. Once a second, a swarm's seed answered every joiner forever.
SEED_PROBE_INTERVAL = RTT_REWRITE_INTERVAL

# Death verdicts the request-cutting task may lag behind: a mass failure heard
# at once is thousands (each verdict costs it a dictionary lookup).
VERDICT_BUFFER = 4096


CONTACTS_PINGED = 8  # saved contacts a restarted agent pings to learn its address


JOIN_RETRY_MAX = 60.0  # s; longest wait between DHT bootstrap attempts


@dataclass(frozen=True)
class AgentCores:
    """The protocol cores of an agent behind one ``Mux``, as the agent runs them
    (tests drive the same composition)."""

    probe: RttProbe
    dht: DhtCore
    comb: Comb
    scouting: Scouting
    revocations: Revocations
    mux: Mux

    @classmethod
    def build(
        cls,
        identity: Identity,
        address: Addr,
        rng: Random,
        now: float,
        *,
        incarnation: int = 0,
        room: int = 1,
        operators: frozenset[bytes] = frozenset(),
        revoked: Iterable[Revocation] = (),
    ) -> AgentCores:
        """``operators``: the operator keys whose placement orders and
        revocations we obey; ``revoked``: revocations kept from before."""
        probe = RttProbe(identity.node_id, RttConfig(interval=SEED_PROBE_INTERVAL), rng)
        dht = DhtCore(identity, address, DhtConfig(), rng, now)
        first = Dance.first(identity.node_id, address, 0, 0, status=_room(room))
        comb = Comb(
            dataclasses.replace(first, incarnation=incarnation),
            CombConfig(),
            rng,
            now,
            placed=False,
            signer=NodeKeySigner(identity),
        )
        scouting = Scouting(
            identity.node_id,
            address,
            comb.live_dances,
            PlacementConfig(),
            rng,
            operators=operators,
            is_member=comb.is_live_member,
        )
        revocations = Revocations(
            identity.node_id,
            operators,
            partial(_link_addrs, comb),
            comb.swim.revoke,
            rng.getrandbits,
            known=revoked,
        )
        for r in revocations.held.values():
            comb.swim.revoke(r.node, now)
        mux = Mux()
        mux.add(probe, Ping, Pong)
        mux.add(dht, *DHT_MESSAGES)
        mux.add(comb, *COMB_MESSAGES)
        mux.add(scouting, *PLACEMENT_MESSAGES)
        mux.add(revocations, *REVOCATION_MESSAGES)
        return cls(probe, dht, comb, scouting, revocations, mux)


def _link_addrs(comb: Comb) -> list[Addr]:
    """Where our comb links are (a revocation spreads over them)."""
    members = comb.swim.members
    return [members[n].addr for n in comb.neighbours() if n in members]


async def _resolve(seed: str) -> Addr:
    host, port = parse_addr(seed)
    infos = await trio.socket.getaddrinfo(host, port, type=_stdlib_socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


def _address_book(config: AgentConfig, bound: Addr, towards: list[Addr]) -> AddressBook:
    """Our first advertised address, and what may change it (``net.address``)."""
    hosts = local_hosts()
    host = guess_host(bound[0], config.advertise, towards, hosts)
    fixed = bool(config.advertise) or not is_wildcard(bound[0])
    return AddressBook(current=(host, bound[1]), fixed=fixed, local=frozenset(hosts))


class Readdress:
    """Our advertised address: peers' reports (``report``), and the re-announcing
    when it changes (``announce``: everything that carries it)."""

    def __init__(
        self,
        book: AddressBook,
        comb: Comb,
        dht_core: DhtCore,
        scouting: Scouting,
        placements: Placements,
        honeycomb: Honeycomb,
        front: FrontDoor,
        jobs: Jobs,
        status: AgentStatus,
    ) -> None:
        self.book = book
        self.comb = comb
        self.dht_core = dht_core
        self.scouting = scouting
        self.placements = placements
        self.honeycomb = honeycomb
        self.front = front
        self.jobs = jobs
        self.status = status
        self.pending = False  # the records in the DHT still carry the old address

    def report(self, reporter: str, seen: Addr, now: float) -> None:
        new = self.book.report(reporter, seen, now)
        if new is None:
            return
        log.info("peers reach us at %s: advertising it", printable(format_addr(new)))
        self.comb.readdress(new, now)  # SWIM and the dance: at once
        self.dht_core.me = Contact.of(self.dht_core.me.id, new)
        self.scouting.addr = new
        self.placements.readdress(new)
        self.front.address = self.jobs.owner = self.status.address = format_addr(new)
        self.honeycomb.driver.poke()
        self.pending = True

    async def announce(self) -> None:
        """The DHT's records of us: our cell and the models we serve."""
        self.pending = False
        try:
            await self.honeycomb.reannounce()
        except DhtError as e:  # the next change, or the lease renewal, tries again
            log.warning("re-announcing our new address: %s", e)


async def _join(
    dht: Dht,
    honeycomb: Honeycomb,
    seeds: list[Addr],
    known: list[Contact],
    views_from: list[Addr],
    founder: bool,
) -> None:
    """Join the DHT (unless we found the swarm), then take a cell; retry with backoff."""
    if seeds or known:
        await _join_dht(dht, seeds, known)
    delay = 1.0
    while True:
        try:
            await honeycomb.join(views_from, founder=founder)
            return
        except (ClaimError, DhtError) as e:
            log.warning("taking a cell failed: %s; retrying in %.0f s", e, delay)
        await trio.sleep(delay)
        delay = min(delay * 2, JOIN_RETRY_MAX)


async def _join_dht(dht: Dht, seeds: list[Addr], known: list[Contact]) -> None:
    """Bootstrap the DHT, retrying with backoff while nobody answers."""
    delay = 1.0
    while True:
        try:
            neighbours = await dht.bootstrap(seeds, known)
        except DhtError as e:
            log.warning("DHT bootstrap failed: %s", e)
            neighbours = []
        if neighbours:
            log.info("joined the DHT: %d neighbours, %d contacts", len(neighbours), dht.contacts())
            return
        log.info(
            "DHT bootstrap found nobody (seeds down or unreachable, or another swarm key); "
            "retrying in %.0f s",
            delay,
        )
        # Sooner if a node reaches us meanwhile (it joined through us): then
        # there is someone to look ourselves up through.
        with trio.move_on_after(delay):
            await dht.grown_past(dht.contacts())
        delay = min(delay * 2, JOIN_RETRY_MAX)


async def _peer_http(
    front: FrontDoor, stream: trio.SocketStream, first: bytes, ticket: object
) -> None:
    """A connection on the peer port that is not a frame stream: a peer's
    channel (a forward), or plain HTTP (refused)."""
    await front.serve_peer(stream, first, ticket=ticket)  # type: ignore[arg-type]


async def _cut_requests_to_the_dead(
    front: FrontDoor, events: trio.MemoryReceiveChannel[MembershipEvent]
) -> None:
    """Death verdicts: requests waiting on that peer move on now, instead of
    waiting out a timeout for a server that may be frozen (docs/serving.md)."""
    async for event in events:
        if event.state is MemberState.DEAD:
            front.server_died(event.node)


async def _take_probe_events(
    events: trio.MemoryReceiveChannel[RttSample | Observation],
    probe: RttProbe,
    status: AgentStatus,
    readdress: Readdress,
) -> None:
    """The RTT probe's events: the seeds' round trips (for agent.json), and
    peers' reports of the address they reach us at (``Readdress``)."""
    async with trio.open_nursery() as nursery:
        async for event in events:
            if isinstance(event, Observation):
                readdress.report(event.reporter, event.seen, wall_clock())
                if readdress.pending:
                    nursery.start_soon(readdress.announce)
            else:
                _note_rtt(probe, status, event)
