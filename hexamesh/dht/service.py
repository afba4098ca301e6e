"""The DHT for the rest of the agent: ``await dht.get(key)`` and friends.

``Dht`` wraps a :class:`DhtCore` run by a ``CoreDriver``: each call starts an
operation on the core, pokes the driver so its messages leave, and waits (with
a deadline) for the event that ends it, which ``run`` (a task the owner
starts) takes from the driver's channel and hands to the waiting call. It
also saves the routing contacts to a JSON file, so an agent can rejoin after
a restart without a seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from random import Random

import trio

from hexamesh.dht.contact import Contact
from hexamesh.dht.core import DhtConfig, DhtCore, Found, Got, Grew, Stored
from hexamesh.dht.messages import DHT_MESSAGES
from hexamesh.dht.records import Record
from hexamesh.fileio import write_text_atomic
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.udp import open_udp_transport
from hexamesh.peerauth import Authenticator
from hexamesh.wire import Codec, KeyRing

__all__ = ["DHT_MESSAGES", "Dht", "DhtError", "load_contacts", "open_dht_node", "save_contacts"]

log = logging.getLogger(__name__)

OPERATION_TIMEOUT = 30.0  # s; a lookup through dead nodes takes a few RPC timeouts at most
MAX_SAVED_CONTACTS = 200  # contacts written to the contacts file


class DhtError(Exception):
    """A DHT operation could not run or did not finish in time."""


class _Waiting:
    """A call waiting for its operation's event."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Found | Got | Stored | None = None


class Dht:
    def __init__(
        self,
        core: DhtCore,
        driver: CoreDriver,
        *,
        clock: Callable[[], float],
        timeout: float = OPERATION_TIMEOUT,
        revoked: Callable[[bytes], bool] = lambda node: False,
    ) -> None:
        """``revoked(node)``: records this node published are ignored (an
        operator revoked it: ``hexamesh.revocation``)."""
        self.core = core
        self.driver = driver
        self._clock = clock
        self.timeout = timeout
        self.revoked = revoked
        self._events = driver.subscribe(Found, Got, Stored, Grew)
        self._waiting: dict[int, _Waiting] = {}  # operation id -> its caller
        self._grew = trio.Event()  # set (and replaced) when the table takes a contact

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand each operation's result to its caller; until cancelled."""
        task_status.started()
        async for event in self._events:
            if isinstance(event, Grew):
                self._grew.set()
                self._grew = trio.Event()
                continue
            waiting = self._waiting.pop(event.op, None)
            if waiting is not None:  # else its caller gave up (the deadline passed)
                waiting.result = event
                waiting.done.set()

    async def _run(self, start: Callable[[], int], what: str) -> Found | Got | Stored:
        try:
            op = start()
        except (RuntimeError, ValueError) as e:
            raise DhtError(f"{what}: {e}") from None
        waiting = self._waiting[op] = _Waiting()
        self.driver.poke()
        try:
            with trio.move_on_after(self.timeout):
                await waiting.done.wait()
        finally:
            self._waiting.pop(op, None)
        if waiting.result is None:
            raise DhtError(f"{what}: no result within {self.timeout:.0f} s")
        return waiting.result

    async def grown_past(self, size: int) -> None:
        """Return once the routing table holds more than ``size`` contacts."""
        while len(self.core.table) <= size:
            await self._grew.wait()

    async def bootstrap(
        self, seeds: list[Addr], known: list[Contact] | None = None
    ) -> list[Contact]:
        """Join through ``seeds`` and/or saved contacts; returns our closest neighbours."""
        found = await self._run(
            lambda: self.core.bootstrap(seeds, self._clock(), known=known), "bootstrap"
        )
        assert isinstance(found, Found)
        return found.contacts

    async def _got(self, key: str, every_replica: bool) -> Got:
        got = await self._run(
            lambda: self.core.get(key, self._clock(), every_replica=every_replica), f"get {key}"
        )
        assert isinstance(got, Got)
        records = [r for r in got.records if not self.revoked(r.publisher_id)]
        if len(records) < len(got.records):
            seen = {n: s for n, s in got.seen.items() if not self.revoked(n)}
            return dataclasses.replace(got, records=records, seen=seen)
        return got

    async def get(self, key: str, *, every_replica: bool = False) -> list[Record]:
        """Valid records under ``key`` (one for single-owner keys, many for sets;
        with ``every_replica``, every publisher's record the k closest hold)."""
        return (await self._got(key, every_replica)).records

    async def claims(self, key: str) -> tuple[list[Record], dict[bytes, float]]:
        """Every publisher's record under a key (a single-owner key: at every
        replica of the k closest), and when the holders first saw each
        (publisher id -> our clock; ``dht.claim.holder_of`` settles by it)."""
        got = await self._got(key, every_replica=True)
        return got.records, got.seen

    async def put(self, key: str, value: bytes, ttl: float, *, seq: int | None = None) -> int:
        """Sign and store a record of ours (republished until withdrawn); returns replicas.

        ``seq`` defaults to one more than our last publication of ``key``.
        """
        stored = await self._run(
            lambda: self.core.publish(key, value, ttl, self._clock(), seq=seq), f"put {key}"
        )
        assert isinstance(stored, Stored)
        return stored.count

    def withdraw(self, key: str) -> None:
        """Stop republishing ``key`` (it expires at the end of its lease)."""
        self.core.withdraw(key)

    async def providers(self, model: str) -> list[Record]:
        return await self.get(f"model:{model}")

    async def announce(self, model: str, info: bytes, ttl: float) -> int:
        return await self.put(f"model:{model}", info, ttl)

    def closest(self, node_id: bytes, n: int) -> list[Contact]:
        return self.core.closest(node_id, n)

    def contacts(self) -> int:
        """Contacts in the routing table."""
        return len(self.core.table)

    def held(self, prefix: str) -> list[Record]:
        """The records held here (for others, and ours) whose key starts with ``prefix``."""
        return [
            r
            for r in self.core.store.records()
            if r.key.startswith(prefix) and not self.revoked(r.publisher_id)
        ]


def save_contacts(path: Path, contacts: list[Contact]) -> None:
    """Write contacts as JSON (never pickle), atomically."""
    data = [
        {"id": c.id.hex(), "host": c.host, "port": c.port} for c in contacts[:MAX_SAVED_CONTACTS]
    ]
    write_text_atomic(path, json.dumps(data))


def load_contacts(path: Path) -> list[Contact]:
    """Contacts saved by :func:`save_contacts`; a missing or broken file gives none."""
    try:
        data = json.loads(path.read_text())
        return [
            Contact(id=bytes.fromhex(d["id"]), host=str(d["host"]), port=int(d["port"]))
            for d in data
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable contacts file %s: %s", path, e)
        return []


@asynccontextmanager
async def open_dht_node(
    keyring: KeyRing,
    *,
    identity: Identity | None = None,
    host: str = "0.0.0.0",
    port: int = 0,
    clock: Callable[[], float] = time.time,
    config: DhtConfig | None = None,
) -> AsyncIterator[Dht]:
    """A DHT node of its own (transport, core, driver) for the block's duration.

    Used by ``hexamesh dht get/put`` (a short-lived node that joins, asks and
    leaves) and by tests that run many nodes in one process.
    """
    identity = identity or Identity.generate()
    async with open_udp_transport(host, port) as transport, trio.open_nursery() as nursery:
        bound = transport.local_address
        addr = ("127.0.0.1", bound[1]) if bound[0] in ("0.0.0.0", "") else bound
        core = DhtCore(identity, addr, config or DhtConfig(), Random(), clock())
        driver = CoreDriver(
            core,
            transport,
            Codec(keyring, Authenticator(identity)),
            node_id=identity.node_id,
            clock=clock,
        )
        await nursery.start(driver.run)
        dht = Dht(core, driver, clock=clock)
        await nursery.start(dht.run)
        try:
            yield dht
        finally:
            nursery.cancel_scope.cancel()
