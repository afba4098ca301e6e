"""Running an agent: every part wired into one nursery, its services supervised."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from random import Random

import trio

from hexamesh import __version__
from hexamesh.agent.admin import SwarmAdmin
from hexamesh.agent.api import _metrics, _serve_api
from hexamesh.agent.files import (
    BATCHES_FILE_NAME,
    BLOBS_FILE_NAME,
    CONTACTS_FILE_NAME,
    INCARNATION_FILE_NAME,
    JOBS_FILE_NAME,
    PreparedAgent,
    _keep_incarnation,
    _save_contacts,
    load_incarnation,
    prepare_agent,
)
from hexamesh.agent.models import _held, _serve_models, model_spec
from hexamesh.agent.network import (
    CONTACTS_PINGED,
    VERDICT_BUFFER,
    AgentCores,
    Readdress,
    _address_book,
    _cut_requests_to_the_dead,
    _join,
    _peer_http,
    _resolve,
    _take_probe_events,
)
from hexamesh.agent.process import raise_nofile, tame_malloc, wall_clock
from hexamesh.agent.rotate import KeyRotation
from hexamesh.agent.status import (
    STATUS_FILE_NAME,
    STATUS_INTERVAL,
    AgentStatus,
    _health,
    _note_comb,
    _note_health,
    _StatusFile,
)
from hexamesh.comb.service import Honeycomb
from hexamesh.config import AgentConfig
from hexamesh.dht.service import Dht, load_contacts
from hexamesh.engine.supervisor import (
    CPU_MAX_NUM_SEQS,
    Engine,
    EngineConfig,
    EngineError,
    open_engine,
)
from hexamesh.faults import Component, Faults
from hexamesh.invites import InviteBook, admission, redeem
from hexamesh.limits import MAX_INCARNATION
from hexamesh.net.base import Addr, format_addr, parse_addr
from hexamesh.net.channel import ChannelKeys
from hexamesh.net.driver import CoreDriver
from hexamesh.net.rtt import Observation, RttSample
from hexamesh.net.udp import open_udp_transport
from hexamesh.operator import save_operators
from hexamesh.peerauth import Authenticator
from hexamesh.placement.service import Placements, run_swarmscale
from hexamesh.placement.swarmscale import Swarmscale
from hexamesh.placement.vote import Scouting
from hexamesh.policy import policy_of
from hexamesh.revocation import Revocations, load_revocations, save_revocations
from hexamesh.rotation import Rotations
from hexamesh.serve.batches import Batches, BatchStore
from hexamesh.serve.blobs import BlobDisk, Blobs
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.serve.jobs import DhtJobs, Jobs, JobStore
from hexamesh.serve.jobseal import JobSeal
from hexamesh.serve.view import CombView
from hexamesh.services import Services
from hexamesh.swarmkey import (
    save_key_file,
)
from hexamesh.wire import Codec

log = logging.getLogger(__name__)

CONTACTS_SAVE_TICKS = 60  # status intervals between saves of the DHT contacts


LEAVE_TIMEOUT = 2.0  # s a graceful stop spends telling the swarm it leaves


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
        if agent.invite is not None:
            agent = await _admitted(agent)
        await _run_agent(agent, on_ready, engine_config, task_status)
    finally:
        if agent.lock is not None:
            agent.lock.release()


async def _admitted(agent: PreparedAgent) -> PreparedAgent:
    """Redeem the agent's invite at its sponsor: the swarm's key ring (saved,
    so a restart needs no invite) and its operators; InviteError if refused."""
    assert agent.invite is not None
    keys, operators = await redeem(agent.invite, agent.identity)
    agent.keyring.reset(keys)
    path = agent.config.swarm_key_path
    if not path.exists():
        save_key_file(path, agent.keyring)
    save_operators(agent.config.data_dir, operators)
    log.info("admitted by invite at %s", agent.seeds[-1])
    trusted = agent.operators | frozenset(operators)
    return dataclasses.replace(agent, invite=None, operators=trusted)


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
    # Each run is a new incarnation: its dances and news supersede those of the
    # process before it, which peers may still hold and relay (a dance's version
    # starts again at 1).
    incarnation = min(load_incarnation(incarnation_path) + 1, MAX_INCARNATION)
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
            revoked=load_revocations(config.data_dir, agent.operators),
            # "full": no room for a model a placement vote could give us (_serve_models)
            room=config.placement_room(len(config.model)),
            operators=agent.operators,
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
            Codec(keyring, Authenticator(identity, revoked=cores.revocations.__contains__)),
            node_id=identity.node_id,
            clock=wall_clock,
            faults=faults,
        )
        probe_events = driver.subscribe(RttSample, Observation)
        dht = Dht(dht_core, driver, clock=wall_clock, revoked=cores.revocations.__contains__)
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
            serves = config.model or config.placement_room(0) > 0
            policy = policy_of(config)
            engine_config = engine_config or EngineConfig(server_module=config.engine_module)
            engine_config = dataclasses.replace(
                engine_config, priority_scheduling=policy.priorities.scheduling
            )
            # our engines take requests with this key only (vLLM's VLLM_API_KEY,
            # in their environment: not in ps), so local users cannot go around
            # the API keys
            engine_key = secrets.token_urlsafe(24)
            engine_env = {**engine_config.extra_env, "VLLM_API_KEY": engine_key}
            engine_config = dataclasses.replace(engine_config, extra_env=engine_env)
            engine = await stack.enter_async_context(open_engine(engine_config)) if serves else None
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(services.run, "driver", driver.run)
            await nursery.start(services.run, "dht", dht.run)
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
                    raise EngineError("this agent runs no engine (it takes no placements)")
                spec = model_spec(f"{name}={source}", config)
                await engine.load(dataclasses.replace(spec, hub=config.hub_downloads))

            placements = Placements(
                scouting,
                driver,
                dht,
                clock=wall_clock,
                load=load,
                room=lambda: config.placement_room(_held(engine) if engine else len(config.model)),
                sources=config.placement_sources,
                operator=agent.operator_key,
                faults=faults,
            )
            await nursery.start(services.run, "placement", placements.run)
            if engine is not None:
                serve = partial(_serve_models, config, honeycomb, status, engine, placements)
                nursery.start_soon(partial(services.run, "engine", services.wrap("engine", serve)))
                if config.swarmscale:
                    scale = Swarmscale(policy.scale)
                    upkeep = partial(
                        run_swarmscale,
                        placements,
                        engine,
                        comb,
                        scale,
                        clock=wall_clock,
                        replicas=policy.scale_replicas,
                    )
                    swarmscale = services.wrap("swarmscale", upkeep)
                    nursery.start_soon(partial(services.run, "swarmscale", swarmscale))
            view = CombView(honeycomb, engine, trio.current_time())
            await nursery.start(services.run, "view", view.run)
            invites = InviteBook(config.data_dir)  # the ones this agent sponsors
            jobs_dht = DhtJobs(dht, honeycomb.is_dead, honeycomb.is_member, JobSeal(keyring))
            front = FrontDoor(
                view=view,
                keys=ChannelKeys(
                    identity,
                    keyring,
                    revoked=cores.revocations.__contains__,
                    invites=lambda: invites.secrets(wall_clock()),
                ),
                on_invite=lambda secret: (
                    admission(keyring, agent.operators)
                    if invites.use(secret, wall_clock())
                    else None
                ),
                address=status.address,
                api_keys=config.api_keys,
                admin_keys=config.admin_keys,
                metrics_keys=config.metrics_keys,
                engine_key=engine_key,
                metrics=_metrics(honeycomb, transport, driver, faults, services),
                faults=faults,
                health=lambda: _health(status, services),
                routing=policy.routing,
                priorities=policy.priorities,
                engine_slots=None if engine is None else partial(_slots, engine),
            )
            stack.callback(front.close)  # runs before the nursery exits: later give-backs close
            verdicts = honeycomb.subscribe(VERDICT_BUFFER)
            cut = partial(_cut_requests_to_the_dead, front, verdicts)
            nursery.start_soon(partial(services.run, "verdicts", services.wrap("verdicts", cut)))
            transport.serve_http(partial(_peer_http, front))

            def address_of(node: bytes) -> Addr | None:
                addr = honeycomb.address_of(node)
                if addr is None:
                    near = dht.closest(node, 1)
                    addr = (near[0].host, near[0].port) if near and near[0].id == node else None
                return addr

            blobs = Blobs(
                BlobDisk(config.data_dir / BLOBS_FILE_NAME),
                front.keys,
                closest=lambda key, n: [(c.id, (c.host, c.port)) for c in dht.closest(key, n)],
                address_of=address_of,
                is_live=lambda node: (
                    honeycomb.is_member(node)
                    and not honeycomb.is_dead(node)
                    and node not in cores.revocations
                ),
                clock=wall_clock,
            )
            front.mount("/blobs/", blobs, peers_only=True)
            await nursery.start(services.run, "blobs", blobs.run)
            jobs = Jobs(
                JobStore(config.data_dir / JOBS_FILE_NAME),
                front,
                jobs_dht,
                owner=status.address,
                node=identity.node_id,
                max_jobs=config.max_jobs,
                retention=config.job_retention,
                faults=faults,
                blobs=blobs,
                priorities=policy.priorities,
            )
            front.mount("/v1/jobs", jobs, clients_only=True)
            front.metrics.gauge(
                "hexamesh_jobs_active", "Jobs queued or running here", jobs.store.active
            )
            await nursery.start(services.run, "jobs", jobs.run)
            batches = Batches(
                BatchStore(config.data_dir / BATCHES_FILE_NAME),
                jobs,
                retention=config.job_retention,
                clock=wall_clock,
                faults=faults,
            )
            front.mount("/v1/files", batches, clients_only=True)
            front.mount("/v1/batches", batches, clients_only=True)
            await nursery.start(services.run, "batches", batches.run)
            front.mount("/v1/placements", placements, clients_only=True, admin=True)
            admin = SwarmAdmin(
                cores.revocations,
                driver,
                operator=agent.operator_key,
                clock=wall_clock,
                invites=invites,
                sponsor=lambda: (parse_addr(status.address), identity.node_id),
            )
            front.mount("/v1/swarm/", admin, clients_only=True, admin=True)
            rotations = Rotations(
                keyring,
                key_file=config.swarm_key_path,
                data_dir=config.data_dir,
                operators=agent.operators,
                clock=wall_clock,
            )
            rotation = KeyRotation(
                rotations,
                front,
                honeycomb,
                revoked=cores.revocations.__contains__,
                operator=agent.operator_key,
                clock=wall_clock,
            )
            await nursery.start(services.run, "rotation", rotation.run)
            _authority_metrics(front, scouting, placements, cores.revocations, rotation)
            front.mount("/v1/swarm/rotate", rotation, clients_only=True, admin=True)
            front.mount("/swarm/key", rotation, peers_only=True)
            readdress = Readdress(
                book, comb, dht_core, scouting, placements, honeycomb, front, jobs, status
            )
            heard = partial(_take_probe_events, probe_events, probe, status, readdress)
            nursery.start_soon(partial(services.run, "probe", services.wrap("probe", heard)))
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
                    _note_comb(honeycomb, status)
                    _note_health(status, services, faults)
                    status.dht_contacts = len(dht_core.table)
                    status_file.write(status, trio.current_time())
                    if comb.swim.incarnation != kept_incarnation:
                        kept_incarnation = comb.swim.incarnation
                        _keep_incarnation(incarnation_path, kept_incarnation, faults)
                    if cores.revocations.new:
                        _keep_revocations(config.data_dir, cores.revocations, faults)
                    if ticks % CONTACTS_SAVE_TICKS == 0 and len(dht_core.table):
                        _save_contacts(contacts_path, dht_core, faults)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT):
                    await honeycomb.leave()
                _keep_incarnation(incarnation_path, comb.swim.incarnation, faults)
                status_path.unlink(missing_ok=True)
                if len(dht_core.table):
                    _save_contacts(contacts_path, dht_core, faults)


def _keep_revocations(data_dir: Path, revocations: Revocations, faults: Faults) -> None:
    """Save the revocations learned since the last call (a restart enforces them)."""
    new, revocations.new = revocations.new, []
    try:
        save_revocations(data_dir, new)
    except OSError as e:
        faults.caught(Component.STATUS, e, "writing the revocations")


def _authority_metrics(
    front: FrontDoor,
    scouting: Scouting,
    placements: Placements,
    revocations: Revocations,
    rotation: KeyRotation,
) -> None:
    """What the authority checks refused and what the operator calls did."""
    front.metrics.labelled(
        "counter",
        "hexamesh_authority_refused",
        "Elections, placed models and revocations refused: no operator's word, "
        "a shrunk electorate, or a source this machine does not load",
        "what",
        lambda: {
            "election": float(scouting.unauthorised),
            "placement_load": float(placements.refused_loads),
            "revocation": float(revocations.refused),
        },
    )
    front.metrics.counter(
        "hexamesh_invites_redeemed",
        "Nodes admitted through this agent with an invite",
        lambda: float(front.invites_redeemed),
    )
    front.metrics.labelled(
        "counter",
        "hexamesh_key_handoffs",
        "New swarm keys handed to members over peer channels, by outcome",
        "outcome",
        lambda: {"taken": float(rotation.handed_over), "failed": float(rotation.handoffs_failed)},
    )


def _slots(engine: Engine, model: str) -> int:
    """Batch slots of our engine's server of ``model`` (vLLM's default if it went)."""
    try:
        return engine.slots(model)
    except EngineError:
        return CPU_MAX_NUM_SEQS
