"""The DHT for the rest of the agent: ``await dht.get(key)`` and friends.

``Dht`` wraps a :class:`DhtCore` run by a ``CoreDriver``: each call starts an
operation on the core, pokes the driver so its messages leave, and waits (with
a deadline) for the core's callback. It also saves the routing contacts to a
JSON file, so an agent can rejoin after a restart without a seed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from random import Random
from typing import Any

import trio

from hexamesh.dht.contact import Contact
from hexamesh.dht.core import DhtConfig, DhtCore
from hexamesh.dht.lookup import LookupStats
from hexamesh.dht.messages import DHT_MESSAGES
from hexamesh.dht.records import Record
from hexamesh.fileio import write_text_atomic
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.udp import open_udp_transport
from hexamesh.wire import Codec, KeyRing

__all__ = ["DHT_MESSAGES", "Dht", "DhtError", "load_contacts", "open_dht_node", "save_contacts"]

log = logging.getLogger(__name__)

OPERATION_TIMEOUT = 30.0  # s; a lookup through dead nodes takes a few RPC timeouts at most
MAX_SAVED_CONTACTS = 200  # contacts written to the contacts file


class DhtError(Exception):
    """A DHT operation could not run or did not finish in time."""


class Dht:
    def __init__(
        self,
        core: DhtCore,
        driver: CoreDriver,
        *,
        clock: Callable[[], float],
        timeout: float = OPERATION_TIMEOUT,
    ) -> None:
        self.core = core
        self.driver = driver
        self._clock = clock
        self.timeout = timeout

    async def _run(self, start: Callable[[Callable[..., None]], Any], what: str) -> Any:
        done = trio.Event()
        box: list[Any] = []

        def callback(result: Any, stats: LookupStats) -> None:
            box.append(result)
            done.set()

        try:
            start(callback)
        except (RuntimeError, ValueError) as e:
            raise DhtError(f"{what}: {e}") from None
        self.driver.poke()
        with trio.move_on_after(self.timeout):
            await done.wait()
        if not box:
            raise DhtError(f"{what}: no result within {self.timeout:.0f} s")
        return box[0]

    async def bootstrap(
        self, seeds: list[Addr], known: list[Contact] | None = None
    ) -> list[Contact]:
        """Join through ``seeds`` and/or saved contacts; returns our closest neighbours."""
        result: list[Contact] = await self._run(
            lambda cb: self.core.bootstrap(seeds, self._clock(), cb, known=known), "bootstrap"
        )
        return result

    async def get(self, key: str, *, every_replica: bool = False) -> list[Record]:
        """Valid records under ``key`` (one for single-owner keys, many for sets;
        with ``every_replica``, every publisher's record the k closest hold)."""
        result: list[Record] = await self._run(
            lambda cb: self.core.get(key, self._clock(), cb, every_replica=every_replica),
            f"get {key}",
        )
        return result

    async def put(self, key: str, value: bytes, ttl: float, *, seq: int | None = None) -> int:
        """Sign and store a record of ours (republished until withdrawn); returns replicas.

        ``seq`` defaults to one more than our last publication of ``key``.
        """
        result: int = await self._run(
            lambda cb: self.core.publish(key, value, ttl, self._clock(), cb, seq=seq),
            f"put {key}",
        )
        return result

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
        return [r for r in self.core.store.records() if r.key.startswith(prefix)]


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
        driver = CoreDriver(core, transport, Codec(keyring), node_id=identity.node_id, clock=clock)
        await nursery.start(driver.run)
        try:
            yield Dht(core, driver, clock=clock)
        finally:
            nursery.cancel_scope.cancel()
