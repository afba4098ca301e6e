"""Payloads too large for a DHT record, held by several agents.

A durable job's request or result may be up to ``MAX_BODY`` bytes; a DHT
record holds 8 KiB. Such a payload is a blob: stored on disk by the agent that
made it and pushed, over the authenticated peer channel, to the
``BLOB_COPIES`` live members closest to its key (``blob:<id>`` in the DHT's
metric), before the job it belongs to moves on (accepted, done). What points
at a blob is a :class:`BlobRef` (its id, the digest of its content, its size,
who holds it), carried in the job's record; a reader asks the holders it
names, then the members closest to its key (where repairs put copies), and
checks the digest, so a holder that lies or lost it is passed over.

A holder repairs: every ``REPAIR_INTERVAL`` it looks at the blobs it holds,
and where a holder it knows of is dead, the live holder with the lowest node
id pushes a copy to the closest live member that has none, until there are
``BLOB_COPIES`` copies besides its own again. Every copy has an expiry; a
holder deletes it then, or earlier when the agent that made it says so
(``DELETE``, from that agent only).

Bounds, against any key holder: a blob is at most ``MAX_BODY`` bytes, an
agent holds at most ``BLOB_BUDGET`` bytes of blobs, of which one sender's
pushes at most ``BLOB_SHARE``, for at most ``MAX_BLOB_TTL``; a push past a
bound is refused (507) and counted, and the pusher tries the next member.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hexamesh.dht.contact import key_id
from hexamesh.fileio import open_private_db
from hexamesh.identity import NODE_ID_BYTES, short_id
from hexamesh.limits import BLOB_BUDGET, BLOB_SHARE, MAX_BLOB_TTL, MAX_BODY
from hexamesh.net.base import Addr
from hexamesh.net.channel import ChannelKeys
from hexamesh.serve.http import HttpConnection, Request
from hexamesh.serve.peerroute import route_headers
from hexamesh.serve.relay import Peer, UpstreamError, open_upstream, read_body, request_bytes
from hexamesh.serve.requests import ApiError

__all__ = ["BLOB_COPIES", "BlobDisk", "BlobError", "BlobRef", "Blobs"]

log = logging.getLogger(__name__)

BLOB_COPIES = 2  # live members besides its maker that hold a blob before it counts as stored
REPAIR_INTERVAL = 10.0  # s between a holder's looks for blobs whose holders died
TRANSFER_TIMEOUT = 30.0  # s for one blob to go to or come from a peer (1 MiB on a slow link)
CANDIDATES = 8  # closest members asked, in order, for a push or a read past the named holders
# What a copy costs against the budget beyond its content: its row (ids,
# holders), so that empty blobs are not free
ROW_COST = 1024  # bytes
REPAIR_BACKOFF = 600.0  # s before a repair nobody took is tried again
H_DIGEST, H_EXPIRES, H_OWNER, H_HOLDERS = (
    "x-hexamesh-blob-digest",
    "x-hexamesh-blob-expires",
    "x-hexamesh-blob-owner",
    "x-hexamesh-blob-holders",
)
_ID = re.compile(r"^[0-9a-f]{32}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobError(Exception):
    """A blob could not be stored with enough holders, or read from any."""


def digest_of(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where a payload is: what a job's record carries instead of it."""

    id: str  # 32 hex digits, random (two equal payloads are two blobs: deleted apart)
    digest: str  # blake2b-256 of the content, hex
    size: int
    holders: tuple[bytes, ...]  # node ids that took a copy when it was stored

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "digest": self.digest,
            "size": self.size,
            "holders": [h.hex() for h in self.holders],
        }

    @classmethod
    def from_doc(cls, doc: object) -> BlobRef:
        """A ref from a record (anyone's); raises ValueError on a malformed one."""
        if not isinstance(doc, dict):
            raise ValueError("a blob ref is an object")
        bid, digest, size, holders = (doc.get(k) for k in ("id", "digest", "size", "holders"))
        if not isinstance(bid, str) or not _ID.match(bid):
            raise ValueError("malformed blob id")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ValueError("malformed blob digest")
        if not isinstance(size, int) or not 0 <= size <= MAX_BODY:
            raise ValueError("blob size out of range")
        if not isinstance(holders, list) or len(holders) > CANDIDATES:
            raise ValueError("malformed blob holders")
        nodes = tuple(_node(h) for h in holders)
        return cls(bid, digest, size, nodes)

    @property
    def key(self) -> bytes:
        return blob_key(self.id)


def blob_key(bid: str) -> bytes:
    """A blob's place in the DHT's metric: the members closest to it hold copies."""
    return key_id(f"blob:{bid}")


def _node(text: object) -> bytes:
    node = bytes.fromhex(text) if isinstance(text, str) else b""
    if len(node) != NODE_ID_BYTES:
        raise ValueError("malformed node id")
    return node


@dataclass(frozen=True, slots=True)
class Held:
    """A copy held here, without its content."""

    id: str
    digest: str
    size: int
    expires: float
    owner: bytes  # the agent that made it: only it may delete it early
    holders: tuple[bytes, ...]


class BlobRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BlobDisk:
    """The copies this agent holds, in SQLite (a write is on disk when it returns)."""

    def __init__(self, path: Path, *, budget: int = BLOB_BUDGET, share: float = BLOB_SHARE) -> None:
        self.db = open_private_db(path)  # prompts and answers
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, digest TEXT, data BLOB,"
            " size INTEGER, expires REAL, sender TEXT, owner TEXT, holders TEXT)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS blobs_sender ON blobs (sender)")
        self.budget, self.share = budget, share
        self.refused = 0  # pushes refused (over a bound, or a different blob under a known id)

    def put(
        self,
        held: Held,
        data: bytes,
        *,
        sender: bytes,
        now: float,
    ) -> bool:
        """Keep a copy; False if it was held already. Raises BlobRefused."""
        try:
            self._check(held, data, sender, now)
        except BlobRefused:
            self.refused += 1
            raise
        known = self.get_held(held.id)
        if known is not None:
            return False
        self.db.execute(
            "INSERT INTO blobs VALUES (?,?,?,?,?,?,?,?)",
            (
                held.id,
                held.digest,
                data,
                len(data),
                held.expires,
                sender.hex(),
                held.owner.hex(),
                ",".join(h.hex() for h in held.holders),
            ),
        )
        return True

    def _check(self, held: Held, data: bytes, sender: bytes, now: float) -> None:
        if len(data) > MAX_BODY:
            raise BlobRefused(413, f"a blob is at most {MAX_BODY} bytes")
        if digest_of(data) != held.digest:
            raise BlobRefused(400, "the content does not match its digest")
        if held.expires > now + MAX_BLOB_TTL:
            raise BlobRefused(400, f"a blob is kept at most {MAX_BLOB_TTL:.0f} s")
        known = self.get_held(held.id)
        if known is not None:
            if known.digest != held.digest:
                raise BlobRefused(409, "another blob is held under this id")
            return
        cost = len(data) + ROW_COST
        if self.bytes_held() + cost > self.budget:
            raise BlobRefused(507, "this agent holds as many blobs as it may")
        (mine,) = self.db.execute(
            "SELECT COALESCE(SUM(size), 0) + COUNT(*) * ? FROM blobs WHERE sender=?",
            (ROW_COST, sender.hex()),
        ).fetchone()
        if mine + cost > self.budget * self.share:
            raise BlobRefused(507, "this agent holds as many of your blobs as it may")

    def get(self, bid: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM blobs WHERE id=?", (bid,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_held(self, bid: str) -> Held | None:
        row = self.db.execute(
            "SELECT id, digest, size, expires, owner, holders FROM blobs WHERE id=?", (bid,)
        ).fetchone()
        return None if row is None else _held(row)

    def held(self) -> list[Held]:
        rows = self.db.execute(
            "SELECT id, digest, size, expires, owner, holders FROM blobs ORDER BY id"
        ).fetchall()
        return [_held(r) for r in rows]

    def set_holders(self, bid: str, holders: tuple[bytes, ...]) -> None:
        self.db.execute(
            "UPDATE blobs SET holders=? WHERE id=?", (",".join(h.hex() for h in holders), bid)
        )

    def delete(self, bid: str) -> bool:
        return self.db.execute("DELETE FROM blobs WHERE id=?", (bid,)).rowcount == 1

    def expire(self, now: float) -> int:
        return int(self.db.execute("DELETE FROM blobs WHERE expires < ?", (now,)).rowcount)

    def bytes_held(self) -> int:
        """What the copies held cost against the budget: content and rows."""
        (total,) = self.db.execute(
            "SELECT COALESCE(SUM(size), 0) + COUNT(*) * ? FROM blobs", (ROW_COST,)
        ).fetchone()
        return int(total)


def _held(row: tuple[Any, ...]) -> Held:
    bid, digest, size, expires, owner, holders = row
    nodes = tuple(bytes.fromhex(h) for h in holders.split(",") if h)
    return Held(bid, digest, size, expires, bytes.fromhex(owner), nodes)


# (node id, address) of the members closest to a key, nearest first, from the DHT's table
Closest = Callable[[bytes, int], list[tuple[bytes, Addr]]]


class Blobs:
    """Store, read, repair and delete blobs; the peer channel's ``/blobs/`` endpoints."""

    def __init__(
        self,
        disk: BlobDisk,
        keys: ChannelKeys,
        *,
        closest: Closest,
        address_of: Callable[[bytes], Addr | None],
        is_live: Callable[[bytes], bool],
        clock: Callable[[], float],
        copies: int = BLOB_COPIES,
    ) -> None:
        self.disk = disk
        self.keys = keys
        self.node = keys.identity.node_id
        self._closest = closest
        self._address_of = address_of
        self._is_live = is_live
        self._clock = clock
        self.copies = copies
        self.repaired = 0  # copies pushed to replace those of dead holders
        self.bad_copies = 0  # copies a holder sent that did not match their digest
        self._repair_after: dict[str, float] = {}  # blob id -> when a refused repair may retry

    # -- storing and reading ------------------------------------------------

    def _others(self, key: bytes, skip: set[bytes]) -> list[tuple[bytes, Addr]]:
        return [
            (n, a)
            for n, a in self._closest(key, CANDIDATES + len(skip))
            if n != self.node and n not in skip and self._is_live(n)
        ][:CANDIDATES]

    async def store(self, data: bytes, ttl: float) -> BlobRef:
        """Keep ``data`` here and push it to ``copies`` live members (or every
        other live member, in a smaller swarm); raises BlobError if fewer took it."""
        now = self._clock()
        bid = secrets.token_hex(16)
        held = Held(bid, digest_of(data), len(data), now + min(ttl, MAX_BLOB_TTL), self.node, ())
        try:
            self.disk.put(held, data, sender=self.node, now=now)
        except BlobRefused as e:
            raise BlobError(f"cannot keep the payload here: {e}") from None
        ref = BlobRef(bid, held.digest, len(data), (self.node,))
        candidates = self._others(ref.key, set())
        need = min(self.copies, len(candidates))
        # each holder is told the others it should have: none repairs a copy
        # that was never missing
        meant = (self.node, *[n for n, _ in candidates[:need]])
        took = await self._push_to(dataclasses.replace(held, holders=meant), data, candidates, need)
        if len(took) < need:
            self.disk.delete(bid)
            raise BlobError(f"only {len(took)} of {need} members took a copy")
        holders = (self.node, *took)
        self.disk.set_holders(bid, holders)
        return BlobRef(bid, held.digest, len(data), holders)

    async def _push_to(
        self, held: Held, data: bytes, candidates: list[tuple[bytes, Addr]], need: int
    ) -> list[bytes]:
        """Push to the candidates in order until ``need`` took it (``need`` at a time)."""
        took: list[bytes] = []
        queue = list(candidates)
        while len(took) < need and queue:
            batch, queue = queue[: need - len(took)], queue[need - len(took) :]
            results: dict[bytes, bool] = {}
            async with trio.open_nursery() as nursery:
                for node, addr in batch:
                    nursery.start_soon(self._push_one, held, data, node, addr, results)
            took += [n for n, _ in batch if results.get(n)]
        return took

    async def _push_one(
        self,
        held: Held,
        data: bytes,
        node: bytes,
        addr: Addr,
        results: dict[bytes, bool],
    ) -> None:
        headers = [
            (H_DIGEST, held.digest),
            (H_EXPIRES, repr(held.expires)),
            (H_OWNER, held.owner.hex()),
            (H_HOLDERS, ",".join(h.hex() for h in held.holders)),
        ]
        try:
            status, _, answer = await self._call(node, addr, "PUT", held.id, data, headers)
        except UpstreamError as e:
            log.info("blob %s: %s did not take it: %s", held.id[:8], short_id(node), e)
            results[node] = False
            return
        if status not in (200, 201):
            log.info("blob %s: %s refused it: %s", held.id[:8], short_id(node), answer[:200])
        results[node] = status in (200, 201)

    async def fetch(self, ref: BlobRef) -> bytes:
        """The content, from here, a named holder, or a member closest to its
        key, checked against its digest; raises BlobError."""
        local = self.disk.get(ref.id)
        if local is not None and digest_of(local) == ref.digest:
            return local
        named = [(h, self._address_of(h)) for h in dict.fromkeys(ref.holders) if h != self.node]
        tried = {h for h, _ in named}
        asked = [(h, a) for h, a in named if a is not None and self._is_live(h)]
        asked += self._others(ref.key, tried)
        for node, addr in asked:
            try:
                status, _, data = await self._call(node, addr, "GET", ref.id)
            except UpstreamError as e:
                log.info("blob %s: %s: %s", ref.id[:8], short_id(node), e)
                continue
            if status != 200:
                continue
            if digest_of(data) != ref.digest:
                self.bad_copies += 1
                log.warning("blob %s: %s sent a copy that is not it", ref.id[:8], short_id(node))
                continue
            return data
        raise BlobError(f"no holder of blob {ref.id[:8]} answered with it")

    async def delete(self, ref: BlobRef) -> None:
        """Delete our copy and, as its maker, the holders' (best effort: they
        expire it anyway)."""
        self.disk.delete(ref.id)
        for node in ref.holders:
            addr = self._address_of(node) if node != self.node else None
            if addr is None:
                continue
            try:
                await self._call(node, addr, "DELETE", ref.id)
            except UpstreamError as e:
                log.debug("blob %s: could not delete at %s: %s", ref.id[:8], short_id(node), e)

    async def _call(
        self,
        node: bytes,
        addr: Addr,
        method: str,
        bid: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = route_headers(self.node, None) + (headers or [])
        request = request_bytes(method, *addr, f"/blobs/{bid}", body, all_headers)
        with trio.move_on_after(TRANSFER_TIMEOUT) as scope:
            up = await open_upstream(*addr, request, peer=Peer(node, self.keys))
            try:
                data = await read_body(up)
            finally:
                await up.aclose()
            if len(data) > MAX_BODY:
                raise UpstreamError("a blob over the size limit")
            return up.status, up.headers, data
        assert scope.cancelled_caught
        raise UpstreamError(f"no answer within {TRANSFER_TIMEOUT:.0f} s")

    # -- repair -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(REPAIR_INTERVAL)
            await self.repair()

    async def repair(self) -> int:
        """Expire old copies; push new ones where a holder died and we are the
        live holder that repairs (the lowest id). Returns copies pushed."""
        now = self._clock()
        self.disk.expire(now)
        # (kept only while it bites: the ids of blobs gone would pile up)
        self._repair_after = {b: t for b, t in self._repair_after.items() if t > now}
        pushed = 0
        for held in self.disk.held():
            live = [h for h in held.holders if h == self.node or self._is_live(h)]
            if self.node not in live:
                live.append(self.node)
            if len(live) > self.copies or min(live) != self.node:
                continue
            if self._repair_after.get(held.id, 0.0) > now:
                continue  # nobody took it lately: not every round
            data = self.disk.get(held.id)
            if data is None:  # deleted meanwhile
                continue
            candidates = self._others(blob_key(held.id), set(held.holders))
            renewed = Held(held.id, held.digest, held.size, held.expires, held.owner, tuple(live))
            took = await self._push_to(renewed, data, candidates, self.copies + 1 - len(live))
            if not took:
                self._repair_after[held.id] = now + REPAIR_BACKOFF
            else:
                pushed += len(took)
                self.repaired += len(took)
                self.disk.set_holders(held.id, (*live, *took))
                log.info("blob %s: %d new copies for dead holders", held.id[:8], len(took))
        return pushed

    # -- the peer endpoints --------------------------------------------------

    async def handle(self, request: Request, conn: HttpConnection) -> bool:
        """``/blobs/<id>`` on the peer channel: PUT a copy, GET it, DELETE it (its maker)."""
        bid = request.path.removeprefix("/blobs/")
        if conn.peer is None or not _ID.match(bid):
            raise ApiError(404, "no such blob", code="not_found")
        sender, method = conn.peer, request.method
        if method == "PUT" and not self._is_live(sender):
            self.disk.refused += 1  # a key that never joined, or one held dead
            raise ApiError(403, "blobs are taken from live members only", type="permission_error")
        if method == "GET":
            data = self.disk.get(bid)
            if data is None:
                raise ApiError(404, "no such blob here", code="not_found")
            await conn.respond(
                200,
                data,
                content_type="application/octet-stream",
                keep_alive=request.keep_alive,
            )
        elif method == "PUT":
            status = self._take(bid, request, sender)
            await conn.respond(status, b"{}", keep_alive=request.keep_alive)
        elif method == "DELETE":
            held = self.disk.get_held(bid)
            if held is not None and held.owner != sender:
                raise ApiError(403, "only its maker deletes a blob early", type="permission_error")
            self.disk.delete(bid)
            await conn.respond(200, b"{}", keep_alive=request.keep_alive)
        else:
            raise ApiError(405, "/blobs/<id> takes GET, PUT and DELETE")
        return True

    def _take(self, bid: str, request: Request, sender: bytes) -> int:
        try:
            digest = request.headers[H_DIGEST]
            expires = float(request.headers[H_EXPIRES])
            owner = _node(request.headers[H_OWNER])
            holders = tuple(_node(h) for h in request.headers.get(H_HOLDERS, "").split(",") if h)
        except (KeyError, ValueError):
            self.disk.refused += 1
            raise ApiError(400, "a blob comes with its digest, expiry and owner") from None
        if not _DIGEST.match(digest) or len(holders) > CANDIDATES or expires != expires:
            self.disk.refused += 1
            raise ApiError(400, "malformed blob headers")
        holders = tuple(dict.fromkeys((*holders, self.node)))  # the pusher names us too
        held = Held(bid, digest, len(request.body), expires, owner, holders)
        try:
            new = self.disk.put(held, request.body, sender=sender, now=self._clock())
        except BlobRefused as e:
            raise ApiError(e.status, str(e), code="blob_refused") from None
        return 201 if new else 200


def ref_doc(ref: BlobRef | None) -> str | None:
    """A ref as the job store keeps it (JSON), None for none."""
    return None if ref is None else json.dumps(ref.doc())


def ref_from_text(text: str | None) -> BlobRef | None:
    return None if not text else BlobRef.from_doc(json.loads(text))
