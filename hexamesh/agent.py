"""The agent: wires identity, swarm key, transport and cores into one nursery.

The agent binds the peer port (UDP + TCP) and runs its protocol cores behind
one ``Mux`` over the sealed wire: the RTT probe (it probes its seeds), the
Kademlia DHT (it joins through its seeds, or through the contacts it saved
before a restart) and the honeycomb (``Comb``: SWIM failure detection and
waggle gossip over six links). The founder of a swarm (no seeds) claims the
centre cell 0,0; a joiner surveys its seeds' views and claims a cell through
the DHT (``comb.service.Honeycomb``). On a graceful stop it leaves: its links
hear at once and its cell frees within a second.

While running, the agent keeps ``<data_dir>/agent.json`` up to date (node id,
address, cell, pid, RTT to each seed, comb neighbours, peers it holds alive
and dead, its services' health), so tools and tests can see its state
without scraping logs.

*Addresses.* The address peers are told is a guess at first and then what
peers report seeing (``net.address``): joiners ping their seeds, a restarted
agent pings its saved contacts. When it changes, the agent re-announces it
(``Readdress``): a SWIM announcement at a higher incarnation, its dance, its
cell record and its ``model:`` records.

*Containment.* Every service runs under ``services.Services`` (restarted with
backoff when it fails, shown as degraded meanwhile); every unit of work
reports what it raises to one ``faults.Faults`` (counted per component in the
metrics). A write of agent.json that fails is tried again at the next tick.
The agent raises its descriptor limit (``limits.NOFILE_WANTED``) and keeps
its SWIM incarnation in the data dir, so that a restart refutes its old
death with a small step (``limits.MAX_INCARNATION_JUMP``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import resource
import socket as _stdlib_socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from random import Random

import trio

from hexamesh import __version__
from hexamesh.comb.core import COMB_MESSAGES, Comb, CombConfig
from hexamesh.comb.service import ClaimError, Honeycomb
from hexamesh.comb.swim import MembershipEvent, MemberState
from hexamesh.comb.waggle import Dance
from hexamesh.config import AgentConfig
from hexamesh.dht.contact import Contact
from hexamesh.dht.core import DhtConfig, DhtCore
from hexamesh.dht.service import DHT_MESSAGES, Dht, DhtError, load_contacts, save_contacts
from hexamesh.engine.device import Device
from hexamesh.engine.supervisor import (
    Engine,
    EngineConfig,
    EngineError,
    EngineState,
    ModelSpec,
    open_engine,
)
from hexamesh.faults import Component, Faults
from hexamesh.fileio import DataDirLock, write_text_atomic
from hexamesh.identity import Identity
from hexamesh.limits import API_CONNECTIONS, CONNECTIONS_PER_SOURCE, NOFILE_WANTED
from hexamesh.logs import printable
from hexamesh.net.address import AddressBook, guess_host, is_wildcard, local_hosts
from hexamesh.net.admission import Admission
from hexamesh.net.base import Addr, format_addr, parse_addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.mux import Mux
from hexamesh.net.rtt import Ping, Pong, RttConfig, RttProbe
from hexamesh.net.udp import UdpTransport, open_udp_transport
from hexamesh.placement.messages import PLACEMENT_MESSAGES
from hexamesh.placement.service import Placements, run_swarmscale
from hexamesh.placement.swarmscale import ScaleConfig, Swarmscale
from hexamesh.placement.vote import PlacementConfig, Scouting
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.serve.jobs import DhtJobs, Jobs, JobStore
from hexamesh.serve.metrics import ServeMetrics
from hexamesh.serve.peerauth import PeerSigner
from hexamesh.serve.view import CombView
from hexamesh.services import Services
from hexamesh.swarmkey import (
    JoinToken,
    SwarmKeyError,
    load_key_file,
    save_key_file,
)
from hexamesh.wire import Codec, KeyRing

__all__ = [
    "STATUS_FILE_NAME",
    "AgentStatus",
    "PreparedAgent",
    "prepare_agent",
    "resolve_keyring",
    "run_agent",
]

log = logging.getLogger(__name__)

STATUS_FILE_NAME = "agent.json"
STATUS_INTERVAL = 1.0  # s between rewrites of agent.json
RTT_REWRITE_INTERVAL = 10.0  # s; agent.json is not rewritten more often for new RTTs alone
# s between RTT probes of each seed (the first at start): the RTT is only shown
# in agent.json, which takes a new one at most this often, and the comb's SWIM
# watches liveness. Once a second, a swarm's seed answered every joiner forever.
SEED_PROBE_INTERVAL = RTT_REWRITE_INTERVAL
CONTACTS_FILE_NAME = "contacts.json"
JOBS_FILE_NAME = "jobs.sqlite"
INCARNATION_FILE_NAME = "incarnation"  # our SWIM incarnation, kept across restarts
CONTACTS_PINGED = 8  # saved contacts a restarted agent pings to learn its address
CONTACTS_SAVE_TICKS = 60  # status intervals between saves of the DHT contacts
JOIN_RETRY_MAX = 60.0  # s; longest wait between DHT bootstrap attempts
TABLE_POLL = 1.0  # s; while bootstrap waits to retry, how often it looks for a node that reached us
LEAVE_TIMEOUT = 2.0  # s a graceful stop spends telling the swarm it leaves
UPTIME_STEP = 60.0  # s; the dance's uptime is refreshed this often (placement votes weigh it)
# s between readings of the GPU's memory for the dance (an nvidia-smi run, ~20 ms
# of a thread): placement votes weigh free GPU memory, which changes when a
# server starts or stops, not from second to second
GPU_POLL = 10.0


@dataclass
class AgentStatus:
    node_id: str
    address: str
    cell: str | None
    pid: int
    version: str
    founder: bool
    seeds: dict[str, float | None] = field(default_factory=dict)  # seed -> srtt in ms
    dht_contacts: int = 0  # contacts in the DHT routing table
    neighbours: list[str] = field(default_factory=list)  # comb links, node ids (hex)
    models: dict[str, dict[str, object]] = field(default_factory=dict)  # name -> state, load
    alive: list[str] = field(default_factory=list)  # members held alive or suspect
    dead: list[str] = field(default_factory=list)  # members held dead
    api: str | None = None  # the OpenAI API's base URL, e.g. http://127.0.0.1:7421/v1
    # "ok", or "degraded" while a service is being restarted (``services``)
    health: str = "ok"
    services: dict[str, dict[str, object]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # contained failures by component


def resolve_keyring(config: AgentConfig) -> tuple[KeyRing, tuple[str, ...], bool]:
    """The swarm key ring, the seeds to join, and whether we found a new swarm.

    A join token supplies both key and seed; its key is saved to the key file
    if there is none (as Consul keeps ``-encrypt`` in its data dir), so a
    restart without the token stays in the swarm, and the CLI's commands that
    read the key file find it. With no seeds and no key file, this node founds
    a swarm with a new key, which the agent writes to the key file (mode 0600)
    once bound. With seeds but no key, it refuses: a node without the key can
    neither join nor read.
    """
    seeds = config.join
    path = config.swarm_key_path
    if config.token:
        token = JoinToken.decode(config.token)
        seeds = (*seeds, format_addr((token.host, token.port)))
        ring = KeyRing(token.key)
        if not path.exists():
            save_key_file(path, ring)
            log.info("saved the token's swarm key to %s", path)
        elif _primary_in(path) != token.key:
            log.warning("%s holds another swarm key: left as it is, the token's is used", path)
        return ring, seeds, False
    if not path.exists() and not seeds:
        return KeyRing.generate(), seeds, True
    if not path.exists():
        raise SwarmKeyError(
            f"joining needs the swarm key: copy it to {path}, or pass --token from "
            "`hexamesh swarm invite` on a member"
        )
    return load_key_file(path), seeds, not seeds


def _primary_in(path: Path) -> bytes | None:
    """The primary key of a key file, None if it cannot be read."""
    try:
        return load_key_file(path).primary
    except SwarmKeyError:
        return None


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


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise the soft descriptor limit towards ``wanted`` (never past the hard
    limit), as Go and Consul do; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the descriptor limit from %d: %s", soft, e)
    return int(soft)


MMAP_THRESHOLD = 128 * 1024  # bytes; glibc allocations this large get mappings of their own


def tame_malloc() -> None:
    """glibc only: fix the size above which an allocation gets its own mapping
    (and goes back to the system when freed) at ``MMAP_THRESHOLD``. By default
    the threshold grows after the first such buffer is freed, and from then
    on every 1 MiB request body or upstream read stays in the heap for good: a
    flood of large requests raised the agent's memory for the rest of its life."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # malloc.h
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)


def load_incarnation(path: Path) -> int:
    """Our SWIM incarnation when we last ran (0 if unknown)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    return max(0, value)


class _StatusFile:
    """agent.json, rewritten only when it changed (a write and rename: ~0.2 ms
    of CPU and a disk write). The seeds' round-trip times wobble every tick,
    so a change in them alone is written at most every ``RTT_REWRITE_INTERVAL``.
    A write that fails (disk full, out of descriptors) is reported and tried
    again at the next tick: the file is for tools, the agent runs on."""

    def __init__(self, path: Path, faults: Faults) -> None:
        self.path = path
        self.faults = faults
        self._last = ""
        self._shape = ""  # the last text written, with only whether each RTT is known
        self._written_at = -math.inf

    def write(self, status: AgentStatus, now: float) -> None:
        fields = asdict(status)
        text = json.dumps(fields, indent=2) + "\n"
        try:
            if text == self._last and self.path.exists():
                return
            measured = {seed: rtt is not None for seed, rtt in status.seeds.items()}
            shape = json.dumps({**fields, "seeds": measured})
            rtts_only = shape == self._shape and self.path.exists()
            if rtts_only and now - self._written_at < RTT_REWRITE_INTERVAL:
                return
            write_text_atomic(self.path, text)
        except OSError as e:
            self.faults.caught(Component.STATUS, e, f"writing {self.path.name}")
            return
        self._last, self._shape, self._written_at = text, shape, now


@dataclass(frozen=True)
class PreparedAgent:
    """What an agent needs before it binds: checked early, outside any nursery."""

    config: AgentConfig
    identity: Identity
    keyring: KeyRing
    seeds: tuple[str, ...]
    founder: bool
    # A new swarm's key, written once the agent is bound (a start that fails
    # on a taken port leaves no key of a swarm that never ran).
    unsaved_key: Path | None = None
    lock: DataDirLock | None = None  # held on the data dir until run_agent returns


def prepare_agent(config: AgentConfig) -> PreparedAgent:
    """Lock the data dir, load (or create) the node key and the swarm key;
    raises DataDirBusy, IdentityError or SwarmKeyError."""
    lock = DataDirLock(config.data_dir)
    try:
        identity = Identity.load_or_create(config.data_dir)
        keyring, seeds, founder = resolve_keyring(config)
    except BaseException:
        lock.release()
        raise
    path = config.swarm_key_path
    unsaved = path if founder and not path.exists() else None  # a new swarm's key
    return PreparedAgent(config, identity, keyring, seeds, founder, unsaved, lock)


def wall_clock() -> float:
    """Unix time: DHT record expiries are absolute, so agents must agree on the clock."""
    return time.time()


async def run_agent(
    agent: AgentConfig | PreparedAgent,
    *,
    on_ready: Callable[[AgentStatus], None] | None = None,
    engine_config: EngineConfig | None = None,
    task_status: trio.TaskStatus[AgentStatus] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled. ``task_status.started`` gets the status once bound.

    ``engine_config`` replaces the engine's defaults (tests run a stand-in vLLM).
    The data dir's lock is released on return.
    """
    if isinstance(agent, AgentConfig):
        agent = prepare_agent(agent)
    try:
        await _run_agent(agent, on_ready, engine_config, task_status)
    finally:
        if agent.lock is not None:
            agent.lock.release()


async def _run_agent(
    agent: PreparedAgent,
    on_ready: Callable[[AgentStatus], None] | None,
    engine_config: EngineConfig | None,
    task_status: trio.TaskStatus[AgentStatus],
) -> None:
    config, identity, keyring = agent.config, agent.identity, agent.keyring
    faults = Faults()
    services = Services(faults)
    tame_malloc()
    # each port's connection bounds within a quarter of our descriptors (limits.py)
    connections = max(16, raise_nofile() // 4)
    seed_addrs = [await _resolve(s) for s in agent.seeds]
    contacts_path = config.data_dir / CONTACTS_FILE_NAME
    known = [c for c in load_contacts(contacts_path) if c.id != identity.node_id]
    founder = agent.founder and not known
    incarnation_path = config.data_dir / INCARNATION_FILE_NAME
    incarnation = load_incarnation(incarnation_path)
    async with open_udp_transport(config.host, config.port, faults) as transport:
        transport.admission.total = min(transport.admission.total, connections)
        transport.admission.per_source = min(transport.admission.per_source, connections)
        bound = transport.local_address
        contact_addrs = [(c.host, c.port) for c in known[:CONTACTS_PINGED]]
        book = _address_book(config, bound, [*seed_addrs, *contact_addrs])
        address = book.current
        rng = Random()
        cores = AgentCores.build(
            identity,
            address,
            rng,
            wall_clock(),
            incarnation=incarnation,
            # "full": no room for a model a placement vote could give us (_serve_models)
            room=config.max_models - len(config.model),
        )
        probe, dht_core, comb, scouting, mux = (
            cores.probe,
            cores.dht,
            cores.comb,
            cores.scouting,
            cores.mux,
        )
        driver = CoreDriver(
            mux,
            transport,
            Codec(keyring),
            node_id=identity.node_id,
            clock=wall_clock,
            faults=faults,
        )
        dht = Dht(dht_core, driver, clock=wall_clock)
        honeycomb = Honeycomb(comb, driver, dht, clock=wall_clock, rng=rng)
        status = AgentStatus(
            node_id=identity.node_id.hex(),
            address=format_addr(address),
            cell=None,
            pid=os.getpid(),
            version=__version__,
            founder=founder,
            seeds={format_addr(a): None for a in seed_addrs},
        )
        status_path = config.data_dir / STATUS_FILE_NAME
        status_file = _StatusFile(status_path, faults)
        log.info(
            "node %s listening on %s (bound %s)", identity.short, status.address, format_addr(bound)
        )
        async with AsyncExitStack() as stack:
            serves = config.model or config.max_models > 0
            engine_config = engine_config or EngineConfig(server_module=config.engine_module)
            engine = await stack.enter_async_context(open_engine(engine_config)) if serves else None
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(services.run, "driver", driver.run)
            now = wall_clock()
            for addr in seed_addrs:
                probe.watch(addr, now)
            for addr in contact_addrs:  # what do our old peers see? (our address, after a move)
                probe.ping(addr, now)
            driver.poke()
            await nursery.start(services.run, "comb", honeycomb.run)
            views_from = [*seed_addrs, *[(c.host, c.port) for c in known[:8]]]
            join = partial(_join, dht, honeycomb, seed_addrs, known, views_from, founder)
            nursery.start_soon(partial(services.run, "join", services.wrap("join", join)))

            async def load(name: str, source: str) -> None:
                if engine is None:
                    raise EngineError("this agent runs no engine (--max-models 0)")
                await engine.load(model_spec(f"{name}={source}", config))

            placements = Placements(
                scouting,
                driver,
                dht,
                clock=wall_clock,
                load=load,
                room=lambda: config.max_models - (_held(engine) if engine else len(config.model)),
                faults=faults,
            )
            await nursery.start(services.run, "placement", placements.run)
            if engine is not None:
                serve = partial(_serve_models, config, honeycomb, status, engine, placements)
                nursery.start_soon(partial(services.run, "engine", services.wrap("engine", serve)))
                if config.swarmscale:
                    scale = Swarmscale(ScaleConfig())
                    upkeep = partial(
                        run_swarmscale, placements, engine, comb, scale, clock=wall_clock
                    )
                    swarmscale = services.wrap("swarmscale", upkeep)
                    nursery.start_soon(partial(services.run, "swarmscale", swarmscale))
            view = CombView(honeycomb, engine, trio.current_time())
            await nursery.start(services.run, "view", view.run)
            jobs_dht = DhtJobs(dht, lambda n: honeycomb.comb.swim.state_of(n) is MemberState.DEAD)
            front = FrontDoor(
                view=view,
                signer=PeerSigner(keyring, identity.node_id),
                address=status.address,
                api_keys=config.api_keys,
                metrics=_metrics(honeycomb, transport, driver, faults, services),
                faults=faults,
                health=lambda: _health(status, services),
            )
            stack.callback(front.close)  # runs before the nursery exits: later give-backs close
            honeycomb.on_event(partial(_cut_requests_to_the_dead, front))
            transport.http_handler = partial(_peer_http, front)
            front.jobs = jobs = Jobs(
                JobStore(config.data_dir / JOBS_FILE_NAME),
                front,
                jobs_dht,
                owner=status.address,
                node=identity.node_id,
                max_jobs=config.max_jobs,
                retention=config.job_retention,
                faults=faults,
            )
            front.metrics.gauge(
                "hexamesh_jobs_active", "Jobs queued or running here", jobs.store.active
            )
            await nursery.start(services.run, "jobs", jobs.run)
            front.placements = placements
            readdress = Readdress(
                book, comb, dht_core, scouting, placements, honeycomb, front, jobs, status
            )
            status.api = await nursery.start(_serve_api, config, front, services, connections)
            if agent.unsaved_key is not None:  # bound: this swarm runs; before agent.json
                save_key_file(agent.unsaved_key, keyring)
                log.info("founded a new swarm; wrote its key to %s", agent.unsaved_key)
            status_file.write(status, trio.current_time())
            if on_ready is not None:
                on_ready(status)
            task_status.started(status)
            ticks = 0
            kept_incarnation = incarnation
            try:
                while True:
                    await trio.sleep(STATUS_INTERVAL)
                    ticks += 1
                    for seen in probe.observations():
                        readdress.report(seen.reporter, seen.seen, wall_clock())
                    if readdress.pending:
                        nursery.start_soon(readdress.announce)
                    _note_rtts(probe, status)
                    _note_comb(honeycomb, status)
                    _note_health(status, services, faults)
                    status.dht_contacts = len(dht_core.table)
                    status_file.write(status, trio.current_time())
                    if comb.swim.incarnation != kept_incarnation:
                        kept_incarnation = comb.swim.incarnation
                        _keep_incarnation(incarnation_path, kept_incarnation, faults)
                    if ticks % CONTACTS_SAVE_TICKS == 0 and len(dht_core.table):
                        _save_contacts(contacts_path, dht_core, faults)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT):
                    await honeycomb.leave()
                _keep_incarnation(incarnation_path, comb.swim.incarnation, faults)
                status_path.unlink(missing_ok=True)
                if len(dht_core.table):
                    _save_contacts(contacts_path, dht_core, faults)


@dataclass(frozen=True)
class AgentCores:
    """The protocol cores of an agent behind one ``Mux``, as the agent runs them
    (tests drive the same composition)."""

    probe: RttProbe
    dht: DhtCore
    comb: Comb
    scouting: Scouting
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
    ) -> AgentCores:
        probe = RttProbe(identity.node_id, RttConfig(interval=SEED_PROBE_INTERVAL), rng)
        dht = DhtCore(identity, address, DhtConfig(), rng, now)
        first = Dance.first(identity.node_id, address, 0, 0, status=_room(room))
        comb = Comb(
            dataclasses.replace(first, incarnation=incarnation),
            CombConfig(),
            rng,
            now,
            placed=False,
        )
        scouting = Scouting(identity.node_id, address, comb.live_dances, PlacementConfig(), rng)
        mux = Mux()
        mux.add(probe, Ping, Pong)
        mux.add(dht, *DHT_MESSAGES)
        mux.add(comb, *COMB_MESSAGES)
        mux.add(scouting, *PLACEMENT_MESSAGES)
        return cls(probe, dht, comb, scouting, mux)


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


async def _peer_http(
    front: FrontDoor, stream: trio.SocketStream, first: bytes, ticket: object
) -> None:
    """An HTTP connection on the peer port (a peer's signed forward)."""
    await front.serve_connection(stream, first, peer=True, ticket=ticket)  # type: ignore[arg-type]


def _keep_incarnation(path: Path, incarnation: int, faults: Faults) -> None:
    try:
        write_text_atomic(path, f"{incarnation}\n")
    except OSError as e:
        faults.caught(Component.STATUS, e, f"writing {path.name}")


def _save_contacts(path: Path, dht_core: DhtCore, faults: Faults) -> None:
    try:
        save_contacts(path, dht_core.closest(dht_core.me.id, 200))
    except OSError as e:
        faults.caught(Component.STATUS, e, f"writing {path.name}")


def _health(status: AgentStatus, services: Services) -> dict[str, object]:
    """What /health adds to the node and address: "degraded" while a service restarts."""
    degraded = services.degraded()
    return {"status": "degraded" if degraded else "ok", "degraded": degraded}


def _note_health(status: AgentStatus, services: Services, faults: Faults) -> None:
    status.services = dict(services.states())
    status.health = "degraded" if services.degraded() else "ok"
    status.errors = {c.value: n for c, n in faults.counts.items() if n}


def _cut_requests_to_the_dead(front: FrontDoor, event: MembershipEvent) -> None:
    """A death verdict: requests waiting on that peer move on now, instead of
    waiting out a timeout for a server that may be frozen (docs/serving.md)."""
    if event.state is MemberState.DEAD:
        front.server_died(event.node)


def _room(free: int) -> str:
    """The dance's status: "up" while a placement vote may give us a model."""
    return "up" if free > 0 else "full"


def _held(engine: Engine) -> int:
    """Models the engine serves or is starting (a failed one holds no room)."""
    return sum(
        st not in (EngineState.FAILED, EngineState.STOPPED) for st in engine.models().values()
    )


def _note_rtts(probe: RttProbe, status: AgentStatus) -> None:
    for sample in probe.samples():
        key = format_addr(sample.addr)
        before = status.seeds.get(key)
        if sample.rtt is None:
            log.debug("probe to %s lost", key)
            continue
        srtt = probe.srtt(sample.addr)
        status.seeds[key] = None if srtt is None else round(srtt * 1000, 1)
        if before is None:
            log.info("seed %s reachable, rtt %.2f ms", key, sample.rtt * 1000)


def model_spec(text: str, config: AgentConfig) -> ModelSpec:
    """``--model`` value -> spec: ``NAME=DIR|ID`` or ``DIR|ID`` (named after its last part).

    On a GPU each model this agent may hold gets an equal part of ``gpu_share``:
    vLLM takes its whole share at start, so the first of two would leave no room."""
    name, sep, model = text.partition("=")
    if not sep:
        model, name = text, Path(text.rstrip("/")).name
    held = max(1, config.max_models, len(config.model))
    return ModelSpec(
        name=name,
        model=model,
        kv_cache_gb=float(config.kv_cache_gb),
        max_model_len=config.max_model_len,
        gpu_memory_utilization=round(config.gpu_share / held, 3),
    )


def _metrics(
    honeycomb: Honeycomb,
    transport: UdpTransport,
    driver: CoreDriver,
    faults: Faults,
    services: Services,
) -> ServeMetrics:
    metrics = ServeMetrics()
    swim = honeycomb.comb.swim

    def alive() -> float:
        return float(sum(m.state is not MemberState.DEAD for m in swim.members.values()))

    metrics.gauge("hexamesh_peers_alive", "Members held alive or suspect", alive)
    metrics.gauge("hexamesh_comb_links", "Comb links", lambda: len(honeycomb.neighbours()))
    st = transport.stats
    metrics.counter("hexamesh_gossip_datagrams_sent", "Datagrams sent", lambda: st.datagrams_sent)
    metrics.counter("hexamesh_gossip_bytes_sent", "Datagram bytes sent", lambda: st.bytes_sent)
    metrics.counter(
        "hexamesh_gossip_datagrams_received", "Datagrams received", lambda: st.datagrams_received
    )
    metrics.counter(
        "hexamesh_gossip_malformed",
        "Peer messages dropped as malformed",
        lambda: driver.stats.malformed,
    )
    metrics.counter(
        "hexamesh_updates_refused",
        "Membership news refused (an incarnation out of bounds, hearsay over the cap)",
        lambda: swim.refused,
    )
    metrics.labelled(
        "counter",
        "hexamesh_errors",
        "Units of work that failed and were dropped (a datagram, connection, stream, job...)",
        "component",
        lambda: {c.value: float(n) for c, n in faults.counts.items()},
    )
    metrics.labelled(
        "gauge",
        "hexamesh_service_up",
        "1 while the service runs, 0 while it waits to be restarted",
        "service",
        lambda: {name: float(services.up(name)) for name in services.states()},
    )
    metrics.labelled(
        "counter",
        "hexamesh_service_restarts",
        "Times the service failed and was restarted",
        "service",
        lambda: {name: float(services.restarts(name)) for name in services.states()},
    )
    peer = transport.admission.stats
    metrics.labelled(
        "counter",
        "hexamesh_peer_connections_refused",
        "Connections to the peer port closed at once, by reason",
        "reason",
        lambda: {
            "per_source": float(peer.refused_source),
            "full": float(peer.refused_full),
            "evicted_idle": float(peer.evicted),
            "silent": float(st.silent),
        },
    )
    return metrics


async def _serve_api(
    config: AgentConfig,
    front: FrontDoor,
    services: Services,
    connections: int,
    *,
    task_status: trio.TaskStatus[str],
) -> None:
    """The OpenAI API listener; reports its base URL once bound. Connections
    are admitted per source and in total (``net.admission``)."""
    try:
        listeners = await trio.open_tcp_listeners(config.api_port, host=config.api_host)
    except OSError as e:  # say which port: the peer port fails the same way
        raise OSError(e.errno, f"API {config.api_host}:{config.api_port}: {e.strerror}") from None
    sockname = listeners[0].socket.getsockname()
    host = config.api_host if config.api_host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{format_addr((host, sockname[1]))}/v1"
    if config.api_host not in ("127.0.0.1", "::1", "localhost") and not config.api_keys:
        log.warning(
            "the API listens on %s without API keys: anyone who reaches it may use it",
            config.api_host,
        )
    admission = Admission(
        total=min(API_CONNECTIONS, connections),
        per_source=min(CONNECTIONS_PER_SOURCE, connections),
    )
    stats = admission.stats
    front.metrics.labelled(
        "counter",
        "hexamesh_api_connections_refused",
        "Connections to the API port closed at once, by reason",
        "reason",
        lambda: {
            "per_source": float(stats.refused_source),
            "full": float(stats.refused_full),
            "evicted_idle": float(stats.evicted),
        },
    )

    async def admitted(stream: trio.SocketStream) -> None:
        try:
            source = str(stream.socket.getpeername()[0])
        except OSError:
            source = ""
        ticket = admission.admit(source)
        if ticket is None:
            _refuse(stream)
            await stream.aclose()
            return
        try:
            await front.serve_connection(stream, ticket=ticket)
        finally:
            ticket.release()

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.serve_listeners(admitted, listeners)

    log.info("OpenAI API on %s", url)
    task_status.started(url)
    await services.run("api", serve)


_BUSY_BODY = json.dumps(
    {
        "error": {
            "message": "too many connections: retry later",
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }
    }
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


def _refuse(stream: trio.SocketStream) -> None:
    """Say 503 to a connection over the bounds, best effort (never waits)."""
    with contextlib.suppress(OSError):
        stream.socket.send(_BUSY)


async def _serve_models(
    config: AgentConfig,
    honeycomb: Honeycomb,
    status: AgentStatus,
    engine: Engine,
    placements: Placements,
) -> None:
    """Load the configured models into the engine; dance them, their load, whether
    there is room for more (status "up" or "full") and our uptime."""
    started = wall_clock()
    gpu_read = -GPU_POLL
    specs = [model_spec(m, config) for m in config.model]
    for spec in specs:
        if spec.name in engine.models():
            continue  # this service was restarted: the engine holds it already
        status.models[spec.name] = {"state": "starting", "load": 0.0}
        try:
            await engine.load(spec)
        except EngineError as e:
            log.error("cannot serve %s: %s", spec.name, e)
            status.models[spec.name] = {"state": "failed", "error": str(e)}
    while True:
        states = engine.models()
        ready = tuple(n for n, st in states.items() if st is EngineState.READY)
        if ready != honeycomb.comb.waggle.dance.models:
            await honeycomb.set_models(ready)
        loads = {n: engine.load_of(n) for n in states}
        for name, st in states.items():
            url = engine.url(name) if st is EngineState.READY else None
            status.models[name] = {"state": st.value, "load": loads[name].load, "url": url}
        dance = honeycomb.comb.waggle.dance
        now: dict[str, object] = {"status": _room(placements.room())}
        if loads:
            worst = max(loads.values(), key=lambda x: x.load)
            now |= {
                "load": worst.load,
                "queue": sum(x.waiting for x in loads.values()),
                "kv": worst.kv,
                "tok_s": round(sum(x.tok_s for x in loads.values()), 1),
            }
        if wall_clock() - started - dance.uptime >= UPTIME_STEP:
            now["uptime"] = round(wall_clock() - started)
        if engine.device.gpu and wall_clock() - gpu_read >= GPU_POLL:
            gpu_read = wall_clock()
            now |= _gpu_memory(await engine.refresh_device())
        if any(getattr(dance, k) != v for k, v in now.items()):
            honeycomb.comb.waggle.update(wall_clock(), **now)
            honeycomb.driver.poke()
        await trio.sleep(STATUS_INTERVAL)


def _gpu_memory(device: Device) -> dict[str, object]:
    """The dance's GPU fields; 0 (not judged on) where nvidia-smi cannot say."""
    total, free = device.gpu_total, device.gpu_free
    if total is None or free is None:
        return {"gpu_total": 0, "gpu_used": 0}
    return {"gpu_total": total, "gpu_used": max(0, total - free)}


def _note_comb(honeycomb: Honeycomb, status: AgentStatus) -> None:
    cell = honeycomb.cell
    status.cell = None if cell is None else str(cell)
    status.neighbours = [n.hex() for n in honeycomb.neighbours()]
    members = honeycomb.comb.swim.members
    status.alive = sorted(n.hex() for n, m in members.items() if m.state is not MemberState.DEAD)
    status.dead = sorted(n.hex() for n, m in members.items() if m.state is MemberState.DEAD)


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
            log.info(
                "joined the DHT: %d neighbours, %d contacts", len(neighbours), len(dht.core.table)
            )
            return
        log.info(
            "DHT bootstrap found nobody (seeds down or unreachable, or another swarm key); "
            "retrying in %.0f s",
            delay,
        )
        # Sooner if a node reaches us meanwhile (it joined through us): then
        # there is someone to look ourselves up through.
        had = len(dht.core.table)
        with trio.move_on_after(delay):
            while len(dht.core.table) <= had:
                await trio.sleep(TABLE_POLL)
        delay = min(delay * 2, JOIN_RETRY_MAX)
