"""The Kademlia DHT as a sans-IO core: RPCs, lookups, records, republishing.

Theory of operation
-------------------
``DhtCore`` has the shape of every core here (``receive``, ``handle_timer``,
``next_timer``, ``outbox``, ``events``). It never waits: an operation
(``lookup``, ``get``, ``put``, ``publish``, ``bootstrap``) starts at once,
returns its id, and reports its result as an event when it finishes, from
inside a later ``receive`` or ``handle_timer``: ``Found`` (contacts),
``Got`` (records) or ``Stored`` (replicas that took a record), each with
the operation's id and statistics. The trio service (``dht/service.py``)
turns them into ``await``; the simulator reads them from ``events``. The
table growing is an event too (``Grew``): a node waiting for someone to
reach it need not poll.

*RPCs.* Every request gets a random 64-bit id; the reply must carry that id
and come from the node id we asked (a reply from anyone else is ignored). At
most ``max_inflight`` requests wait for replies at once; more queue up to
``max_queued`` and beyond that fail at once, so a burst cannot flood the
socket. A request unanswered after ``rpc_timeout`` fails; ``max_failures``
failures in a row drop the contact from the routing table (its freshest
replacement takes the slot).

*Table upkeep.* Any message from a node proves it alive (§2.2) and offers it
to the routing table. When its bucket is full, the table names the bucket's
least-recently-seen contact; we ping it, and drop it only if it stays silent.
A bucket not touched by a lookup for ``refresh_interval`` gets a lookup of a
random id in its range (§2.3).

*Records.* ``put`` finds the k closest nodes to the key and STOREs there (and
here, if we are one of them). ``get`` walks towards the key with FIND_VALUE:
for a single-owner key it stops at the first valid record and then caches it
at the closest node that answered without it (§2.3); for a set key
(``model:``, ``vote:``) it merges the entries of all k closest. Every record
is checked (signature, key, expiry) before we believe it. ``publish`` signs
with our key and republishes our own records when half their TTL is left.

Time is whatever the caller passes as ``now``; record expiries are absolute
seconds on that clock, so agents pass Unix time and simulations their own.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hexamesh.dht.contact import ID_BITS, Contact, key_id
from hexamesh.dht.lookup import Lookup, LookupStats
from hexamesh.dht.messages import (
    DhtPing,
    DhtPong,
    FindNode,
    FindValue,
    Nodes,
    Store,
    StoreResult,
    Value,
)
from hexamesh.dht.records import (
    MAX_KEY,
    MAX_VALUE,
    KeyKind,
    Record,
    RecordStore,
    StoreConfig,
    StoreRefused,
    key_kind,
    sign_record,
)
from hexamesh.dht.routing import RoutingTable
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope, Message

__all__ = ["DhtConfig", "DhtCore", "DhtEvent", "DhtStats", "Found", "Got", "Grew", "Stored"]

log = logging.getLogger(__name__)

NodesCallback = Callable[[list[Contact], LookupStats], None]
RecordsCallback = Callable[[list[Record], LookupStats, dict[bytes, float]], None]
StoredCallback = Callable[[int, LookupStats], None]
ReplyCallback = Callable[[Message, Contact, float], None]
FailCallback = Callable[[float], None]


@dataclass(frozen=True, kw_only=True)
class DhtConfig:
    k: int = 20  # bucket size and replication factor (Kademlia §2.2)
    alpha: int = 3  # queries in flight per lookup (§2.3)
    rpc_timeout: float = 1.0  # s; well above WAN RTT, short enough to route around the dead
    max_failures: int = 2  # timeouts in a row before a contact leaves the table
    max_inflight: int = 64  # requests awaiting replies at once (a burst of 2,000 dropped packets)
    max_queued: int = 1024  # requests waiting for a slot; more fail at once
    max_operations: int = 128  # lookups/gets/puts running at once; more are refused
    refresh_interval: float = 3600.0  # s; idle buckets get a random lookup (§2.3)
    join_refreshes: int = 8  # buckets beyond our closest neighbour refreshed when joining
    refresh_budget: int = 6  # queries per join refresh: enough to meet a bucket's nodes
    sparse_retry: float = 5.0  # s; with fewer than k contacts, look ourselves up again, doubling
    republish_fraction: float = 0.5  # republish own records when this share of TTL is left
    expire_interval: float = 60.0  # s between sweeps of expired records
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)  # limits of what we hold


@dataclass(frozen=True, slots=True)
class Found:
    """A ``lookup`` or ``bootstrap`` ended: the closest nodes it found."""

    op: int
    contacts: list[Contact]
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class Got:
    """A ``get`` ended: the valid records it found (none: the key is empty)."""

    op: int
    records: list[Record]
    stats: LookupStats
    # publisher id -> when the holders first saw its record, by our clock (the
    # median over the holders that said): how old a claim really is; filled
    # for ``every_replica`` gets only (claims), empty otherwise
    seen: dict[bytes, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stored:
    """A ``put`` or ``publish`` ended: how many nodes hold the record now."""

    op: int
    count: int
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class Grew:
    """The routing table took a new contact; it holds ``size`` now."""

    size: int


DhtEvent = Found | Got | Stored | Grew


@dataclass
class DhtStats:
    rpcs_sent: int = 0
    rpcs_failed: int = 0  # timeouts and queue overflow
    rpcs_refused: int = 0  # refused at once: queue full
    replies_ignored: int = 0  # unknown id or wrong sender (late, duplicate, spoofed)
    requests_handled: int = 0
    stores_accepted: int = 0
    stores_refused: int = 0
    records_rejected: int = 0  # invalid records in FIND_VALUE replies
    contacts_dropped: int = 0


@dataclass(slots=True)
class _Rpc:
    msg_id: int
    addr: Addr
    expect: bytes | None  # node id the reply must come from (None: bootstrap by address)
    message: Message
    on_reply: ReplyCallback
    on_fail: FailCallback
    deadline: float = 0.0


class _Operation:
    """One running lookup with what to do with its outcome."""

    def __init__(self, lookup: Lookup, started: float, *, key: str | None = None) -> None:
        self.lookup = lookup
        self.started = started
        self.key = key  # set for value lookups
        self.records: dict[bytes, Record] = {}  # publisher id -> best record seen
        self.holders: set[bytes] = set()  # nodes that returned a record
        self.sightings: dict[bytes, list[float]] = {}  # publisher id -> first sight, each holder
        self.every_replica = False  # a single-owner get that does not stop at the first
        self.done = False

    def stats(self, now: float) -> LookupStats:
        return LookupStats(
            hops=self.lookup.hops(),
            queries=self.lookup.queries,
            failures=self.lookup.failures,
            started=self.started,
            finished=now,
        )


class DhtCore:
    def __init__(
        self,
        identity: Identity,
        addr: Addr,
        config: DhtConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        self.identity = identity
        self.me = Contact.of(identity.node_id, addr)
        self.config = config
        self._rng = rng
        self.table = RoutingTable(self.me, config.k, now)
        self.store = RecordStore(config.store)
        self.stats = DhtStats()
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._inflight: dict[int, _Rpc] = {}
        self._queue: deque[_Rpc] = deque()
        self._deadlines: list[tuple[float, int]] = []  # (deadline, msg_id), lazily pruned
        self._deferred: list[Callable[[], None]] = []  # callbacks to run after the current step
        self._failures: dict[bytes, int] = {}  # node id -> timeouts in a row
        self._pinging: set[bytes] = set()  # LRS contacts being checked
        self._operations = 0
        self._op_ids = itertools.count(1)
        self._events: list[DhtEvent] = []
        self._grew_at: int | None = None  # where in _events the one pending Grew is
        self._published: dict[str, tuple[Record, float]] = {}  # key -> (record, ttl)
        self._republish: list[tuple[float, str]] = []  # (when, key), lazily pruned
        self._next_refresh = now + config.refresh_interval
        self._next_expire = now + config.expire_interval
        self._sparse_backoff = config.sparse_retry
        # A node that never bootstraps (a swarm's founder) checks too: it knows
        # only who contacted it, and its nearest may never have (found by
        # test_after_a_burst_of_joins_every_node_knows_its_nearest_neighbour)
        self._next_sparse_check: float | None = now + config.sparse_retry
        self._self_found = 0  # nodes our last self-lookup found: fewer than k = starved

    # ------------------------------------------------------------------ RPCs

    def _request(
        self,
        addr: Addr,
        expect: bytes | None,
        message: Message,
        on_reply: ReplyCallback,
        on_fail: FailCallback,
        now: float,
    ) -> None:
        rpc = _Rpc(self._rng.getrandbits(64), addr, expect, message, on_reply, on_fail)
        if len(self._inflight) < self.config.max_inflight:
            self._dispatch(rpc, now)
        elif len(self._queue) < self.config.max_queued:
            self._queue.append(rpc)
        else:
            self.stats.rpcs_refused += 1
            self._deferred.append(lambda: on_fail(now))

    def _dispatch(self, rpc: _Rpc, now: float) -> None:
        rpc.deadline = now + self.config.rpc_timeout
        self._inflight[rpc.msg_id] = rpc
        heapq.heappush(self._deadlines, (rpc.deadline, rpc.msg_id))
        self._send(rpc.addr, rpc.msg_id, rpc.message)
        self.stats.rpcs_sent += 1

    def _send(self, addr: Addr, msg_id: int, message: Message) -> None:
        env = Envelope(sender=self.me.id, msg_id=msg_id, message=message)
        self._outbox.append((addr, env))

    def _release_slot(self, now: float) -> None:
        while self._queue and len(self._inflight) < self.config.max_inflight:
            self._dispatch(self._queue.popleft(), now)

    def _expire_rpcs(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, msg_id = heapq.heappop(self._deadlines)
            rpc = self._inflight.pop(msg_id, None)
            if rpc is None:
                continue  # answered already
            self.stats.rpcs_failed += 1
            if rpc.expect is not None:
                failures = self._failures.get(rpc.expect, 0) + 1
                self._failures[rpc.expect] = failures
                if failures >= self.config.max_failures and rpc.expect in self.table:
                    self.table.remove(rpc.expect)
                    self._failures.pop(rpc.expect, None)
                    self.stats.contacts_dropped += 1
            rpc.on_fail(now)
        self._release_slot(now)

    # ------------------------------------------------------- the Core interface

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        contact = Contact.of(env.sender, sender)
        rpc = self._inflight.get(env.msg_id)
        if rpc is not None and isinstance(msg, (DhtPong, Nodes, Value, StoreResult)):
            if rpc.expect is not None and rpc.expect != env.sender:
                self.stats.replies_ignored += 1
                return
            del self._inflight[env.msg_id]
            self._failures.pop(env.sender, None)
            self._seen(contact, now)
            rpc.on_reply(msg, contact, now)
            self._release_slot(now)
        elif isinstance(msg, (DhtPing, FindNode, FindValue, Store)):
            self._seen(contact, now)
            self._answer(env, sender, now)
        else:
            self.stats.replies_ignored += 1
        self._run_deferred()

    def handle_timer(self, now: float) -> None:
        self._expire_rpcs(now)
        while self._republish and self._republish[0][0] <= now:
            _, key = heapq.heappop(self._republish)
            self._renew(key, now)
        if now >= self._next_expire:
            self.store.expire(now)
            self._next_expire = now + self.config.expire_interval
        if self._next_sparse_check is not None and now >= self._next_sparse_check:
            self._check_sparse(now)
        if now >= self._next_refresh:
            self._refresh(now, self.table.stale_buckets(now, self.config.refresh_interval))
            self._next_refresh = now + self.config.refresh_interval / 4
        self._run_deferred()

    def next_timer(self) -> float | None:
        times = [self._next_expire, self._next_refresh]
        if self._next_sparse_check is not None:
            times.append(self._next_sparse_check)
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self._republish:
            times.append(self._republish[0][0])
        return min(times)

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[DhtEvent]:
        """Operations ended and the table grown, since the last call. Only our
        own operations end here (at most ``max_operations`` at once) and one
        ``Grew`` stands for all growth since the last call (with the latest
        size): what waits undrained is bounded, however rarely it is read."""
        out, self._events, self._grew_at = self._events, [], None
        return out

    def _run_deferred(self) -> None:
        while self._deferred:
            batch, self._deferred = self._deferred, []
            for fn in batch:
                fn()

    # ----------------------------------------------------------- answering

    def _answer(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        self.stats.requests_handled += 1
        reply: Message
        if isinstance(msg, DhtPing):
            reply = DhtPong()
        elif isinstance(msg, FindNode):
            reply = Nodes(
                contacts=tuple(self.table.closest(msg.target, self.config.k, exclude=env.sender))
            )
        elif isinstance(msg, FindValue):
            records = self.store.get(msg.key, now)
            contacts: tuple[Contact, ...] = ()
            if not records or key_kind(msg.key) is KeyKind.SET:
                contacts = tuple(
                    self.table.closest(key_id(msg.key), self.config.k, exclude=env.sender)
                )
            held = tuple(
                round(self.store.held_for(msg.key, r.publisher_id, now), 3) for r in records
            )
            reply = Value(records=tuple(records), contacts=contacts, held_for=held)
        elif isinstance(msg, Store):
            try:
                self.store.put(msg.record, now)
            except StoreRefused as e:
                self.stats.stores_refused += 1
                reply = StoreResult(ok=False, reason=str(e)[:200])
            else:
                self.stats.stores_accepted += 1
                reply = StoreResult(ok=True, reason="")
        else:  # pragma: no cover - receive() filters
            return
        self._send(sender, env.msg_id, reply)

    def _seen(self, contact: Contact, now: float) -> None:
        """Any message proves a node alive; offer it to the routing table (§2.2)."""
        size = len(self.table)
        stale = self.table.add(contact, now)
        if len(self.table) > size:
            if self._grew_at is None:
                self._grew_at = len(self._events)
                self._events.append(Grew(len(self.table)))
            else:
                self._events[self._grew_at] = Grew(len(self.table))
        if stale is None or stale.id in self._pinging:
            return
        self._pinging.add(stale.id)

        def alive(msg: Message, c: Contact, t: float) -> None:
            self._pinging.discard(stale.id)

        def dead(t: float) -> None:
            self._pinging.discard(stale.id)
            if stale.id in self.table:
                self.table.remove(stale.id)
                self.stats.contacts_dropped += 1

        self._request(stale.addr, stale.id, DhtPing(), alive, dead, now)

    # ------------------------------------------------------------ lookups

    def _start(
        self, target: bytes, now: float, key: str | None = None, budget: int | None = None
    ) -> _Operation:
        if self._operations >= self.config.max_operations:
            raise RuntimeError(f"{self.config.max_operations} DHT operations running already")
        seeds = self.table.closest(target, self.config.k)
        lookup = Lookup(
            target,
            k=self.config.k,
            alpha=self.config.alpha,
            me=self.me.id,
            seeds=seeds,
            max_queries=budget,
        )
        self.table.touch_range(int.from_bytes(target, "big"), now)
        self._operations += 1
        return _Operation(lookup, now, key=key)

    def _step(
        self, op: _Operation, now: float, finish: Callable[[_Operation, float], None]
    ) -> None:
        """Send the next queries of an operation, or finish it."""
        if op.done:
            return
        lookup = op.lookup
        if (
            op.key is not None
            and op.records
            and not op.every_replica
            and key_kind(op.key) is KeyKind.SINGLE
        ):
            finish(op, now)  # a single-owner value: the first valid record ends it
            return
        queries = lookup.next_queries()
        if not queries and lookup.finished():
            finish(op, now)
            return
        message: Message = (
            FindValue(key=op.key) if op.key is not None else FindNode(target=lookup.target)
        )
        for contact in queries:

            def on_reply(msg: Message, c: Contact, t: float) -> None:
                if op.done:
                    return
                found: tuple[Contact, ...] = ()
                if isinstance(msg, Nodes):
                    found = msg.contacts
                elif isinstance(msg, Value):
                    found = msg.contacts
                    self._take_records(op, msg.records, c, t, msg.held_for)
                lookup.on_reply(c.id, found)
                self._step(op, t, finish)

            def on_fail(t: float, c: Contact = contact) -> None:
                if op.done:
                    return
                lookup.on_failure(c.id)
                self._step(op, t, finish)

            self._request(contact.addr, contact.id, message, on_reply, on_fail, now)

    def _take_records(
        self,
        op: _Operation,
        records: tuple[Record, ...],
        holder: Contact,
        now: float,
        held_for: tuple[float, ...] = (),
    ) -> None:
        valid = False
        longest = self.store.config.max_ttl + self.store.config.clock_skew
        for i, record in enumerate(records):
            if record.key != op.key or record.expires <= now or not record.verify():
                self.stats.records_rejected += 1
                continue
            valid = True
            pub = record.publisher_id
            # first sights matter to claims only (every_replica: ``Dht.claims``)
            if op.every_replica and i < len(held_for) and 0.0 <= held_for[i] <= longest:
                op.sightings.setdefault(pub, []).append(now - held_for[i])
            best = op.records.get(pub)
            if best is None or (record.seq, record.expires) > (best.seq, best.expires):
                op.records[pub] = record
        if valid:
            op.holders.add(holder.id)
            if op.lookup.value_hop is None:
                op.lookup.value_hop = op.lookup.hop_of(holder.id)

    def _end(self, op: _Operation) -> None:
        op.done = True
        self._operations -= 1

    # ------------------------------------------------------------ the API

    def lookup(self, target: bytes, now: float, *, budget: int | None = None) -> int:
        """Find the k nodes closest to ``target``; a ``Found`` event ends it.
        With a ``budget`` it stops after that many queries (a cheap refresh).
        Returns the operation's id; raises RuntimeError when too many run."""
        op = next(self._op_ids)
        self._lookup(target, now, lambda c, s: self._events.append(Found(op, c, s)), budget=budget)
        return op

    def get(self, key: str, now: float, *, every_replica: bool = False) -> int:
        """Find the records under ``key``; a ``Got`` event ends it (``_get``).
        Raises ValueError for a key of no known type."""
        op = next(self._op_ids)
        self._get(
            key,
            now,
            lambda r, s, seen: self._events.append(Got(op, r, s, seen)),
            every_replica=every_replica,
        )
        return op

    def put(self, record: Record, now: float) -> int:
        """Store ``record`` at the k closest nodes to its key; a ``Stored`` event ends it."""
        op = next(self._op_ids)
        self._put(record, now, lambda n, s: self._events.append(Stored(op, n, s)))
        return op

    def publish(
        self, key: str, value: bytes, ttl: float, now: float, *, seq: int | None = None
    ) -> int:
        """Sign and ``put`` a record of ours, republished until ``withdraw``
        (``_publish``); a ``Stored`` event ends the first put."""
        op = next(self._op_ids)
        self._publish(
            key, value, ttl, now, lambda n, s: self._events.append(Stored(op, n, s)), seq=seq
        )
        return op

    def bootstrap(
        self, seeds: list[Addr], now: float, *, known: list[Contact] | None = None
    ) -> int:
        """Join through ``seeds`` (and ``known`` contacts, ``_bootstrap``); a
        ``Found`` event ends it, with the nodes closest to us."""
        op = next(self._op_ids)
        self._bootstrap(seeds, now, lambda c, s: self._events.append(Found(op, c, s)), known=known)
        return op

    # ------------------------------------------------------------ operations

    def _lookup(
        self, target: bytes, now: float, on_done: NodesCallback, *, budget: int | None = None
    ) -> None:
        """Find the k nodes closest to ``target`` (FIND_NODE, iteratively).

        With a ``budget`` it stops after that many queries (a cheap refresh).
        """
        op = self._start(target, now, budget=budget)

        def finish(o: _Operation, t: float) -> None:
            self._end(o)
            on_done(o.lookup.result(), o.stats(t))

        self._step(op, now, finish)
        self._run_deferred()

    def _get(
        self, key: str, now: float, on_done: RecordsCallback, *, every_replica: bool = False
    ) -> None:
        """Find the records under ``key`` (FIND_VALUE, iteratively).

        A single-owner key's lookup ends at the first record found, unless
        ``every_replica``: then it asks all k closest nodes and returns every
        publisher's record it saw (claims that raced: the caller settles).
        """
        kind = key_kind(key)
        if kind is None:
            raise ValueError(f"unknown key type in {key!r}")
        op = self._start(key_id(key), now, key=key)
        op.every_replica = every_replica
        local = self.store.get(key, now)
        for r in local if every_replica else ():  # we hold it too: our first sight counts
            op.sightings.setdefault(r.publisher_id, []).append(
                now - self.store.held_for(key, r.publisher_id, now)
            )
        if kind is KeyKind.SET:  # our own entries count; the network adds the rest
            op.records.update((r.publisher_id, r) for r in local)

        def finish(o: _Operation, t: float) -> None:
            self._end(o)
            records = sorted(o.records.values(), key=lambda r: r.publisher_id)
            if kind is KeyKind.SINGLE and o.every_replica:
                seen = {r.publisher_id for r in records}
                records += [r for r in local if r.publisher_id not in seen]
            elif kind is KeyKind.SINGLE:
                if records:
                    self._cache(o, records[0], t)
                else:
                    records = local  # nobody else has it: what we hold is the answer
            first = {pub: statistics.median_low(times) for pub, times in o.sightings.items()}
            on_done(records, o.stats(t), first)

        self._step(op, now, finish)
        self._run_deferred()

    def _cache(self, op: _Operation, record: Record, now: float) -> None:
        """Store a found value at the closest node that answered without it (§2.3)."""
        for contact in op.lookup.answered():
            if contact.id not in op.holders:
                self._request(
                    contact.addr, contact.id, Store(record=record), _ignore_reply, _ignore_fail, now
                )
                return

    def _put(self, record: Record, now: float, on_done: StoredCallback) -> None:
        """Store ``record`` at the k closest nodes to its key (and here, if we are one)."""
        target = key_id(record.key)
        op = self._start(target, now)

        def finish(o: _Operation, t: float) -> None:
            self._end(o)
            closest = o.lookup.result()
            stats = o.stats(t)
            pending = len(closest)
            stored = 0
            me_close = len(closest) < self.config.k or (
                self.me.long_id ^ int.from_bytes(target, "big")
                < closest[-1].long_id ^ int.from_bytes(target, "big")
            )
            if me_close:
                try:
                    self.store.put(record, t)  # False (a duplicate) still means "held here"
                    stored = 1
                except StoreRefused as e:
                    log.debug("%s: own store of %s refused: %s", self.identity.short, record.key, e)
            if not closest:
                on_done(stored, stats)
                return
            counts = {"pending": pending, "stored": stored}

            def one_done(ok: bool) -> None:
                counts["pending"] -= 1
                counts["stored"] += int(ok)
                if counts["pending"] == 0:
                    on_done(counts["stored"], stats)

            for contact in closest:
                self._request(
                    contact.addr,
                    contact.id,
                    Store(record=record),
                    lambda msg, c, t2: one_done(isinstance(msg, StoreResult) and msg.ok),
                    lambda t2: one_done(False),
                    t,
                )

        self._step(op, now, finish)
        self._run_deferred()

    def _publish(
        self,
        key: str,
        value: bytes,
        ttl: float,
        now: float,
        on_done: StoredCallback,
        *,
        seq: int | None = None,
    ) -> Record:
        """Sign and ``put`` a record of ours; it is republished until ``withdraw``.

        Raises ValueError for a key no node would accept (unknown type, too
        long) or a value over ``MAX_VALUE`` bytes, before anything is sent.
        """
        if key_kind(key) is None:
            raise ValueError(
                f"unknown key type in {key!r} (use cell:, placement:, model:, vote:, job:,"
                " jobrun:, file:, batch: or batchrun:)"
            )
        if len(key) > MAX_KEY:
            raise ValueError(f"key is {len(key)} characters, the limit is {MAX_KEY}")
        if len(value) > MAX_VALUE:
            raise ValueError(f"value is {len(value)} bytes, the limit is {MAX_VALUE}")
        previous = self._published.get(key)
        if seq is None:  # else the caller's (a cell claim uses its claim time)
            seq = previous[0].seq + 1 if previous is not None else 1
        record = sign_record(self.identity, key, value, seq, now + ttl)
        self._published[key] = (record, ttl)
        heapq.heappush(self._republish, (now + ttl * (1 - self.config.republish_fraction), key))
        self._put(record, now, on_done)
        return record

    def withdraw(self, key: str) -> None:
        """Stop republishing ``key``; the record vanishes when it expires."""
        self._published.pop(key, None)

    def _renew(self, key: str, now: float) -> None:
        entry = self._published.get(key)
        if entry is None:
            return
        record, ttl = entry
        due = record.expires - ttl * self.config.republish_fraction
        if now < due - 1e-9:
            return  # a newer publish rescheduled it
        renewed = sign_record(self.identity, key, record.value, record.seq, now + ttl)
        self._published[key] = (renewed, ttl)
        heapq.heappush(self._republish, (now + ttl * (1 - self.config.republish_fraction), key))
        if self._operations < self.config.max_operations:
            self._put(renewed, now, lambda n, s: None)

    # ------------------------------------------------------ joining, refresh

    def _bootstrap(
        self,
        seeds: list[Addr],
        now: float,
        on_done: NodesCallback,
        *,
        known: list[Contact] | None = None,
    ) -> None:
        """Join: ping the seeds, look ourselves up, refresh buckets beyond our neighbours.

        ``known`` are contacts saved before a restart; they are pinged with
        their ids like seeds. Seeds are pinged by address (their id is learnt
        from the reply).
        """
        targets: list[tuple[Addr, bytes | None]] = [(a, None) for a in seeds]
        targets += [(c.addr, c.id) for c in known or []]
        pending = {"n": len(targets)}

        def after_pings(at: float) -> None:
            # ``at``: when the last ping ended. A lookup started at ``now`` after
            # an unanswered ping (a second later) got RPCs expired on arrival:
            # a node restarted with only dead saved contacts never joined.
            def after_self(contacts: list[Contact], stats: LookupStats) -> None:
                self._found_self(contacts, stats)
                self._refresh_beyond_neighbour(stats.finished)
                self._next_sparse_check = stats.finished + self._sparse_backoff
                on_done(contacts, stats)

            if self._operations >= self.config.max_operations:
                on_done([], LookupStats(hops=0, queries=0, failures=0, started=at, finished=at))
                return
            self._lookup(self.me.id, at, after_self)

        def one(at: float) -> None:
            pending["n"] -= 1
            if pending["n"] == 0:
                after_pings(at)

        if not targets:
            self._deferred.append(lambda: after_pings(now))
        for addr, node_id in targets:
            self._request(addr, node_id, DhtPing(), lambda m, c, t: one(t), one, now)
        self._run_deferred()

    def _check_sparse(self, now: float) -> None:
        """A joiner whose seed had not joined yet may know almost nobody: try again.

        While our last self-lookup found fewer than k nodes (or we never made
        one: a founder), repeat it with the wait doubling up to
        ``refresh_interval``; in a swarm of fewer than k nodes that costs a
        handful of lookups an hour, and nothing while we know nobody. It is the self-lookup
        that counts, not the table's size: a joiner whose seed knew nobody yet
        found only the seed, then filled its table from the far half (the
        refreshes beyond its "closest" neighbour, the seed) and, by count,
        looked done while it knew none of its neighbours nor they it (seen in
        5 % of simulated swarms of 4-80 nodes joining 10 ms apart).
        """
        if self._self_found >= self.config.k:
            self._next_sparse_check = None  # found our neighbourhood
            return
        if not len(self.table):
            # nobody to ask yet (a founder alone, or every contact gone): look
            # again soon, at no cost, so the first joiner is not kept waiting
            # for a backoff that grew while we were alone
            self._next_sparse_check = now + self.config.sparse_retry
            return
        self._sparse_backoff = min(self._sparse_backoff * 2, self.config.refresh_interval)
        self._next_sparse_check = now + self._sparse_backoff
        if self._operations < self.config.max_operations:
            self._lookup(self.me.id, now, self._found_self)

    def _found_self(self, contacts: list[Contact], stats: LookupStats) -> None:
        self._self_found = len(contacts)

    def _refresh_beyond_neighbour(self, now: float) -> None:
        """Kademlia §2.3: a joiner refreshes the buckets farther than its closest neighbour."""
        closest = self.table.closest(self.me.id, 1)
        if not closest:
            return
        shared = ID_BITS - (closest[0].long_id ^ self.me.long_id).bit_length()
        # The bucket whose ids first differ from ours at bit i (0 = the farthest half),
        # for i < shared; farthest first: they cover most of the id space and, split
        # by the depth rule, hold most of the table (measured: hops p99 7 -> 5 at 10k).
        targets = []
        for i in range(min(shared, self.config.join_refreshes)):
            flip = 1 << (ID_BITS - 1 - i)
            low = self._rng.getrandbits(ID_BITS - 1 - i)
            prefix = (self.me.long_id ^ flip) >> (ID_BITS - 1 - i) << (ID_BITS - 1 - i)
            targets.append(prefix | low)
        for t in targets:
            if self._operations < self.config.max_operations:
                self._lookup(
                    t.to_bytes(ID_BITS // 8, "big"),
                    now,
                    lambda c, s: None,
                    budget=self.config.refresh_budget,
                )

    def _refresh(self, now: float, ranges: list[tuple[int, int]]) -> None:
        for lower, upper in ranges:
            if self._operations >= self.config.max_operations or not len(self.table):
                return
            target = self._rng.randint(lower, upper)
            self._lookup(target.to_bytes(ID_BITS // 8, "big"), now, lambda c, s: None)

    # ------------------------------------------------------------ queries

    def closest(self, node_id: bytes, n: int) -> list[Contact]:
        """The n contacts in our table closest to ``node_id`` (no network)."""
        return self.table.closest(node_id, n)


def _ignore_reply(msg: Message, c: Contact, t: float) -> None:
    pass


def _ignore_fail(t: float) -> None:
    pass
