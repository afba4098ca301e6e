"""Durable jobs: submit now, collect later, from any peer.

``POST /v1/jobs`` takes a completion or chat request (``prompt`` or
``messages``, not streamed) plus ``priority`` (high, medium, low) and an
optional client ``id``, and answers 202 with the job id at once. The job is
written to SQLite (WAL, synchronous=FULL: on disk before the 202) on the
accepting peer and replicated into the DHT as ``job:<id>`` (owned by the
acceptor, updated as it runs), so ``GET /v1/jobs/<id>`` answers on any peer.

Workers on the acceptor run queued jobs, high priority first, through the
router (``FrontDoor.fetch``): a server that dies is replaced by the next
candidate, and a job whose every try failed goes back to the queue with
backoff, failed after ``MAX_ATTEMPTS``. A restarted acceptor requeues the
jobs it was running. If the acceptor itself dies, the nodes that hold its
``job:`` record (the k closest to the key) notice its death, and the first to
claim it in ``jobrun:<id>`` (a set: one entry per claimant; of live
members' claims the one its holders saw first wins, claims within 2 s of it
going to the lowest node id: ``first_claimant``) runs it and publishes the
result there.

A job belongs to the credential that submitted it: the bearer API key (or,
on an open API, the bearer token the client chose, or else a secret returned
once in the 202 as ``secret``, to be shown as a bearer token from then on).
The job keeps only a tag of it (``owner_tag``: a hash with the job id and
the acceptor's node id, so a record that another node publishes, even a copy
of the acceptor's, does not carry a valid tag without the credential); status,
list and cancel answer only the same credential (others get 404, as for a job
that does not exist), and the same id submitted with another credential is
refused (409). Of the DHT's records, a reader trusts the ``job:`` record of
the acceptor (the publisher its holders saw first) and, once the acceptor is
dead, the ``jobrun:`` entries of the claimant that won the run only.

At most once to completion: a given id is accepted once (a retried submit
returns the same job), a job that is ``done`` never runs again, and a
takeover happens only after the failure detector declared the acceptor dead.
A queued job may be cancelled at its acceptor (``POST /v1/jobs/<id>/cancel``).
Payloads: a request or a result of up to ``INLINE`` bytes travels in the
job's DHT record; a larger one (up to the API's ``MAX_BODY``) is a blob
(``serve.blobs``), kept by the agent that made it and pushed to two more
live members over the peer channel before the job is accepted (a request)
or reported done (a result); the record carries its ``BlobRef``, and any
agent that answers status reads the result from its holders. So the death
of any one agent (the acceptor, the server, a holder) loses no accepted job
and no finished result.

Limits: ``max_jobs`` queued or running per acceptor (429 beyond), a job
request of at most ``MAX_BODY`` bytes. Finished jobs (done, failed,
cancelled) are deleted, with their blobs, ``retention`` seconds after they
finished (``--job-retention``, 24 h by default), or at once on ``DELETE``.

Containment: a job whose request turns out malformed (a ``job:`` record any
key holder may have written) fails with an error; a job or a takeover that
raises is reported to ``faults`` and dropped, and the workers go on.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any, Protocol

import msgpack
import trio

from hexamesh.dht.claim import SIGHT_TOLERANCE
from hexamesh.faults import Component, Faults
from hexamesh.fileio import open_private_db
from hexamesh.limits import MAX_BODY
from hexamesh.serve.blobs import BlobError, BlobRef, ref_doc, ref_from_text
from hexamesh.serve.http import HttpConnection, Request
from hexamesh.serve.jobseal import JobSeal
from hexamesh.serve.priority import PriorityPolicy, capped
from hexamesh.serve.requests import ApiError, CompletionRequest, parse_completion, parse_json_body
from hexamesh.serve.router import Priority

__all__ = ["DhtJobs", "JobRunner", "JobState", "JobStore", "Jobs"]

log = logging.getLogger(__name__)

# Bytes of a request or a result carried in the job's DHT record; a larger
# one is a blob. Both inline, with the rest, fit a record (8 KiB) sealed.
INLINE = 3 * 1024
MAX_ATTEMPTS = 5  # full rounds over every candidate before a job is failed
RETRY_DELAY = 2.0  # s before a job whose round failed is tried again (doubles)
WORKERS = 4  # jobs run at once per acceptor (each one request to some server)
JOB_TTL = 24 * 3600.0  # s a job record lives in the DHT
TAKEOVER_INTERVAL = 5.0  # s between scans for jobs whose acceptor died
RETENTION = 24 * 3600.0  # s a finished job is kept (the default of --job-retention)
PRUNE_INTERVAL = 600.0  # s between deletions of finished jobs past their retention
LOW_WAIT = 1.0  # s a low-priority job waits when every server is busy
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobState(enum.StrEnum):
    """Where a job stands (stored and sent as these strings)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # with a result
    FAILED = "failed"  # with an error
    CANCELLED = "cancelled"  # by its owner, before it ran
    DELETED = "deleted"  # by its owner, or past its retention: its record says only that

    @property
    def finished(self) -> bool:
        return self is not JobState.QUEUED and self is not JobState.RUNNING


# The most advanced state wins when the acceptor's record and takers' entries differ.
_ADVANCE = {
    JobState.QUEUED: 0,
    JobState.RUNNING: 1,
    JobState.CANCELLED: 2,
    JobState.FAILED: 2,
    JobState.DONE: 3,
    JobState.DELETED: 4,
}
_OWNER_CONTEXT = b"hexamesh job owner v1"
SECRET_BYTES = 24  # of a job secret made for a client that showed no credential
LIST_LIMIT = 100  # jobs one GET /v1/jobs lists at most (the newest)


def owner_tag(jid: str, acceptor: bytes, credential: str) -> str:
    """What a job keeps of the credential that submitted it: a hash bound to
    the job id (two jobs of one client do not show they share it) and to the
    node that accepted it (a reader checks a record's tag against the node
    that published it: a copy published by another node fails)."""
    data = _OWNER_CONTEXT + jid.encode() + b"\0" + acceptor + credential.encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _owns(jid: str, acceptor: bytes | str, client: str, credential: str) -> bool:
    """Is ``client`` the tag of ``credential``'s job ``jid`` accepted by
    ``acceptor`` (a node id, or its hex as the store keeps it)?"""
    if isinstance(acceptor, str):
        try:
            acceptor = bytes.fromhex(acceptor)
        except ValueError:
            return False
    return bool(client) and hmac.compare_digest(client, owner_tag(jid, acceptor, credential))


class JobFailed(Exception):
    """A job's request was refused by a server (4xx): retrying cannot help."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: str
    model: str
    chat: bool
    body: dict[str, Any]
    priority: Priority
    state: JobState
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    created: float = 0.0
    served_by: str | None = None
    client: str = ""  # owner_tag of the credential that submitted it
    acceptor: str = ""  # the node id (hex) that accepted it: the tag is bound to it
    body_ref: BlobRef | None = None  # where a request over INLINE bytes is held
    result_ref: BlobRef | None = None  # where a result over INLINE bytes is held

    def owned_by(self, credential: str | None) -> bool:
        return credential is not None and _owns(self.id, self.acceptor, self.client, credential)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "model": self.model,
            "priority": self.priority,
            "status": self.state,
            "created": self.created,
            "attempts": self.attempts,
        }
        if self.result is not None:
            out["result"] = self.result
        if self.error:
            out["error"] = self.error
        if self.served_by:
            out["served_by"] = self.served_by
        return out


class JobStore:
    """Jobs in SQLite, WAL mode; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self.db = open_private_db(path)  # prompts and answers: the owner's only
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, model TEXT, chat INTEGER,"
            " body TEXT, priority TEXT, state TEXT, result TEXT, error TEXT, attempts INTEGER,"
            " created REAL, updated REAL, served_by TEXT, client TEXT, acceptor TEXT,"
            " body_ref TEXT, result_ref TEXT)"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        # an older store: jobs of nobody, payloads all inline
        for column in ("client", "acceptor", "body_ref", "result_ref"):
            if column not in columns:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        # a restart: whatever was running when we died runs again
        self.db.execute("UPDATE jobs SET state='queued' WHERE state='running'")

    def _row(self, row: tuple[Any, ...]) -> Job:
        (jid, model, chat, body, prio, state, result, error, attempts, created, served) = row[:11]
        client, acceptor, body_ref, result_ref = row[11:]
        return Job(
            id=jid,
            model=model,
            chat=bool(chat),
            body=json.loads(body),
            priority=Priority(prio),
            state=JobState(state),
            result=json.loads(result) if result else None,
            error=error,
            attempts=attempts,
            created=created,
            served_by=served,
            client=client or "",
            acceptor=acceptor or "",
            body_ref=ref_from_text(body_ref),
            result_ref=ref_from_text(result_ref),
        )

    _COLS = (
        "id, model, chat, body, priority, state, result, error, attempts, created, served_by,"
        " client, acceptor, body_ref, result_ref"
    )

    def get(self, jid: str) -> Job | None:
        row = self.db.execute(f"SELECT {self._COLS} FROM jobs WHERE id=?", (jid,)).fetchone()
        return None if row is None else self._row(row)

    def add(self, job: Job) -> None:
        self.db.execute(
            f"INSERT INTO jobs (updated, {self._COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job.created,
                job.id,
                job.model,
                int(job.chat),
                json.dumps(job.body),
                job.priority,
                job.state,
                json.dumps(job.result) if job.result is not None else None,
                job.error,
                job.attempts,
                job.created,
                job.served_by,
                job.client,
                job.acceptor,
                ref_doc(job.body_ref),
                ref_doc(job.result_ref),
            ),
        )

    def set_state(self, jid: str, state: JobState, **fields: Any) -> None:
        sets = ["state=?", "updated=?"]
        values: list[Any] = [state, time.time()]
        for name, value in fields.items():
            sets.append(f"{name}=?")
            if name == "result":
                value = None if value is None else json.dumps(value)
            elif name == "result_ref":
                value = ref_doc(value)
            values.append(value)
        self.db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*values, jid))

    def start(self, jid: str) -> bool:
        """Move a queued job to running; False if it is not queued any more
        (cancelled since it was read)."""
        cursor = self.db.execute(
            "UPDATE jobs SET state='running', updated=? WHERE id=? AND state='queued'",
            (time.time(), jid),
        )
        return cursor.rowcount == 1

    def active(self) -> int:
        (n,) = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running')"
        ).fetchone()
        return int(n)

    def queued(self) -> list[Job]:
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM jobs WHERE state='queued' ORDER BY"
            " CASE priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, created"
        ).fetchall()
        return [self._row(r) for r in rows]

    def owned(self, credential: str, limit: int = LIST_LIMIT) -> list[Job]:
        """The newest ``limit`` jobs held here that ``credential`` submitted.
        The tag is per job, so no index finds a client's jobs: the ids and
        tags are scanned (not the bodies and results), newest first."""
        rows = self.db.execute(
            "SELECT id, client, acceptor FROM jobs ORDER BY created DESC"
        ).fetchall()
        out = []
        for jid, client, acceptor in rows:
            if _owns(jid, acceptor or "", client or "", credential):
                job = self.get(jid)
                if job is not None:
                    out.append(job)
                if len(out) >= limit:
                    break
        return out

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def prune(self, finished_before: float) -> list[Job]:
        """Delete the jobs that finished before ``finished_before``; the jobs deleted."""
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM jobs WHERE state IN ('done','failed','cancelled')"
            " AND updated < ?",
            (finished_before,),
        ).fetchall()
        gone = [self._row(r) for r in rows]
        for job in gone:
            self.delete(job.id)
        return gone

    def delete(self, jid: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id=?", (jid,))


class JobRunner(Protocol):
    """What runs a job's request: the front door's router with failover."""

    async def fetch(self, req: CompletionRequest, priority: Priority) -> tuple[bytes, str]: ...
    def busy(self, model: str) -> bool: ...
    async def known_or_404(self, model: str) -> object: ...  # raises ApiError 404


class JobDht(Protocol):
    async def put(self, key: str, value: bytes, ttl: float) -> int: ...
    # (publisher, record) pairs; a record's "_seq" is its sequence number and
    # "_seen" when its holders first saw it (our clock; absent if nobody said)
    async def get_records(self, key: str) -> list[tuple[bytes, dict[str, Any]]]: ...
    def held_jobs(self, prefix: str = "job:") -> list[tuple[str, bytes, dict[str, Any]]]: ...
    def is_dead(self, node: bytes) -> bool: ...
    def is_member(self, node: bytes) -> bool: ...
    def withdraw(self, key: str) -> None: ...
    def alone(self) -> bool: ...  # no other node known: a record held here is all there is


class JobBlobs(Protocol):
    """Where payloads over ``INLINE`` bytes go (``serve.blobs.Blobs``)."""

    async def store(self, data: bytes, ttl: float) -> BlobRef: ...
    async def fetch(self, ref: BlobRef) -> bytes: ...
    async def delete(self, ref: BlobRef) -> None: ...


class DhtJobs:
    """``JobDht`` over the agent's DHT service and failure detector; records
    are sealed under the swarm key (``jobseal``)."""

    def __init__(
        self,
        dht: Any,
        is_dead: Callable[[bytes], bool],
        is_member: Callable[[bytes], bool],
        seal: JobSeal,
    ) -> None:
        self._dht = dht
        self.is_dead = is_dead
        self.is_member = is_member
        self._seal = seal

    async def put(self, key: str, value: bytes, ttl: float) -> int:
        return int(await self._dht.put(key, self._seal.seal(key, value), ttl))

    def withdraw(self, key: str) -> None:
        self._dht.withdraw(key)

    def alone(self) -> bool:
        return int(self._dht.contacts()) == 0

    def _doc(self, key: str, value: bytes) -> dict[str, Any] | None:
        opened = self._seal.open(key, value)
        return None if opened is None else decode_record(opened)

    async def get_records(self, key: str) -> list[tuple[bytes, dict[str, Any]]]:
        out = []
        records, seen = await self._dht.claims(key)
        for record in records:
            doc = self._doc(key, record.value)
            if doc is not None:
                # "_seq" and "_seen" are what the holders say, never what the record says
                doc = {k: v for k, v in doc.items() if not str(k).startswith("_")}
                first = seen.get(record.publisher_id)
                extra = {"_seq": record.seq} | ({} if first is None else {"_seen": first})
                out.append((record.publisher_id, doc | extra))
        return out

    def held_jobs(self, prefix: str = "job:") -> list[tuple[str, bytes, dict[str, Any]]]:
        """The records under ``prefix`` held here that open: (key, publisher, record)."""
        out = []
        for record in self._dht.held(prefix):
            doc = self._doc(record.key, record.value)
            if doc is not None:
                out.append((record.key, record.publisher_id, doc))
        return out


def encode_record(job: Job, owner: str) -> bytes:
    """A job's DHT record: its payloads inline, or their blobs' refs."""
    if job.state is JobState.DELETED:  # a tombstone: nothing of the job is kept
        gone = {"id": job.id, "state": job.state, "client": job.client, "acceptor": job.acceptor}
        return bytes(msgpack.packb(gone))
    doc: dict[str, Any] = {
        "id": job.id,
        "model": job.model,
        "chat": job.chat,
        "priority": job.priority,
        "state": job.state,
        "owner": owner,
        "created": job.created,
        "attempts": job.attempts,
        "served_by": job.served_by,
        "error": job.error,
        "client": job.client,
        "acceptor": job.acceptor,
    }
    if job.body_ref is not None:
        doc["body_ref"] = job.body_ref.doc()
    else:
        doc["body"] = job.body
    if job.result_ref is not None:
        doc["result_ref"] = job.result_ref.doc()
    elif job.result is not None:
        doc["result"] = job.result
    return bytes(msgpack.packb(doc))


def decode_record(value: bytes) -> dict[str, Any] | None:
    try:
        doc = msgpack.unpackb(value)
    except Exception:  # anyone's bytes: malformed, too deep, an ext type...
        return None
    return doc if isinstance(doc, dict) and "id" in doc else None


def job_from_doc(doc: dict[str, Any]) -> Job:
    """A job from a DHT record (anyone's: every field is checked by the caller
    that runs it, ``_run_one``); raises ValueError or TypeError on a bad one."""
    body = doc.get("body") or {}
    if not isinstance(body, dict):
        raise ValueError("a job's body must be an object")
    refs = {k: BlobRef.from_doc(doc[k]) for k in ("body_ref", "result_ref") if k in doc}
    return Job(
        id=str(doc["id"]),
        model=str(doc.get("model", "")),
        chat=bool(doc.get("chat")),
        body=dict(body),
        priority=Priority(str(doc.get("priority", Priority.MEDIUM))),
        state=JobState(str(doc.get("state", JobState.QUEUED))),
        result=doc.get("result"),
        error=doc.get("error"),
        attempts=int(doc.get("attempts") or 0),
        created=float(doc.get("created") or 0.0),
        served_by=doc.get("served_by"),
        client=str(doc.get("client") or ""),
        acceptor=str(doc.get("acceptor") or ""),
        **refs,
    )


def merge(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most advanced state among the acceptor's record and takers' entries."""
    if not docs:
        return None

    def advance(doc: dict[str, Any]) -> tuple[int, bool]:
        try:
            rank = _ADVANCE[JobState(str(doc.get("state")))]
        except ValueError:
            rank = -1
        return rank, "result" in doc or "result_ref" in doc

    return max(docs, key=advance)


class Jobs:
    """The /v1/jobs endpoints, the workers and the takeover scan of one agent."""

    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        dht: JobDht | None,
        *,
        owner: str,
        node: bytes,
        max_jobs: int,
        retention: float = RETENTION,
        rng: Random | None = None,
        clock: Callable[[], float] = time.time,
        faults: Faults | None = None,
        blobs: JobBlobs | None = None,
        priorities: PriorityPolicy | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.dht = dht
        self.blobs = blobs
        self.priorities = priorities or PriorityPolicy()  # a job's ask is capped as a request's
        self.owner = owner  # our peer address, written into job records
        self.node = node
        self.max_jobs = max_jobs
        self.retention = retention
        self.faults = faults or Faults()
        self._rng = rng or Random()
        self._clock = clock
        self._wake = trio.Event()
        self._claimed: dict[str, float] = {}  # job id -> when we stopped looking at it

    # -- HTTP ---------------------------------------------------------------

    async def handle(self, request: Request, conn: HttpConnection) -> bool:
        path, method, credential = request.path.rstrip("/"), request.method, request.bearer
        if path == "/v1/jobs" and method == "POST":
            status, doc = await self.submit(request.body, credential)
        elif path == "/v1/jobs" and method == "GET":
            status, doc = 200, self.listing(_needed(credential))
        elif path.startswith("/v1/jobs/") and path.endswith("/cancel") and method == "POST":
            jid = path.removeprefix("/v1/jobs/").removesuffix("/cancel")
            status, doc = 200, await self.cancel(jid, _needed(credential))
        elif path.startswith("/v1/jobs/") and method == "GET":
            status, doc = 200, await self.status(path.removeprefix("/v1/jobs/"), credential)
        elif path.startswith("/v1/jobs/") and method == "DELETE":
            jid = path.removeprefix("/v1/jobs/")
            status, doc = 200, await self.delete(jid, _needed(credential))
        else:
            raise ApiError(405 if path == "/v1/jobs" else 404, f"no such endpoint: {method} {path}")
        await conn.respond(status, json.dumps(doc).encode(), keep_alive=request.keep_alive)
        return True

    def listing(self, credential: str) -> dict[str, Any]:
        """The caller's jobs accepted here, newest first (at most ``LIST_LIMIT``)."""
        data = [job.public() for job in self.store.owned(credential)]
        return {"object": "list", "data": data, "has_more": len(data) >= LIST_LIMIT}

    def _held_for(self, jid: str, credential: str, what: str) -> Job:
        job = self.store.get(jid) if _ID.match(jid) else None
        if job is None or not job.owned_by(credential):
            raise ApiError(
                404,
                f"no job {jid} of yours was accepted here ({what} it at its acceptor)",
                code="job_not_found",
            )
        return job

    async def delete(self, jid: str, credential: str) -> dict[str, Any]:
        """Delete a job held here (queued, or finished) with its payloads, here
        and in the DHT; a running one cannot be."""
        job = self._held_for(jid, credential, "delete")
        if job.state is JobState.RUNNING:
            raise ApiError(409, f"job {jid} is running: delete it once it finished", code="running")
        self.store.delete(jid)
        await self._forget(job)
        return {"id": jid, "object": "job.deleted", "deleted": True}

    async def _forget(self, job: Job) -> None:
        """Delete a job's blobs and replace its record by a tombstone (then
        stop republishing it: the tombstone expires with the record's lease)."""
        for ref in (job.body_ref, job.result_ref):
            if ref is not None and self.blobs is not None and self.node in ref.holders:
                await self.blobs.delete(ref)
        if self.dht is None:
            return
        key = f"job:{job.id}" if job.acceptor == self.node.hex() else f"jobrun:{job.id}"
        await self._publish(dataclasses.replace(job, state=JobState.DELETED), key=key)
        self.dht.withdraw(key)

    async def cancel(self, jid: str, credential: str) -> dict[str, Any]:
        """Cancel a queued job accepted here; one running or finished cannot be."""
        job = self._held_for(jid, credential, "cancel")
        if job.state is JobState.QUEUED:
            self.store.set_state(jid, JobState.CANCELLED, error="cancelled by its owner")
            job = dataclasses.replace(job, state=JobState.CANCELLED, error="cancelled by its owner")
            await self._publish(job)
        elif job.state is not JobState.CANCELLED:
            raise ApiError(409, f"job {jid} is {job.state}: too late to cancel", code="not_queued")
        return job.public()

    async def submit(self, raw: bytes, credential: str | None = None) -> tuple[int, dict[str, Any]]:
        """Accept a job for ``credential`` (None: for a secret made here and
        returned once, as ``secret``)."""
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"a job request is at most {MAX_BODY} bytes, got {len(raw)}")
        body = parse_json_body(raw)
        try:
            priority = capped(Priority(body.pop("priority", Priority.MEDIUM)), self.priorities)
        except ValueError:
            raise ApiError(
                400, "`priority` must be high, medium or low", param="priority"
            ) from None
        chosen = body.pop("id", None)
        jid = chosen or uuid.uuid4().hex
        if not isinstance(jid, str) or not _ID.match(jid):
            raise ApiError(400, "`id` must be 1-64 letters, digits, _ or -", param="id")
        if body.get("stream"):
            raise ApiError(
                400, "jobs are collected, not streamed: leave `stream` out", param="stream"
            )
        chat = "messages" in body
        req = parse_completion(json.dumps(body).encode(), chat=chat)
        secret = None
        if credential is None:
            credential = secret = secrets.token_urlsafe(SECRET_BYTES)
        held = self.store.get(jid)
        if held is not None:  # an idempotent retry: same job, never a second run
            if not held.owned_by(credential):
                raise _taken(jid)
            return 200, held.public()
        client = owner_tag(jid, self.node, credential)
        # (an id of ours is new; one the client chose may be known elsewhere)
        if chosen and self.dht is not None and await self._taken_elsewhere(jid, credential):
            raise _taken(jid)
        # As the chat and completion APIs do: a typo gets a 404 naming the
        # models served now, not a 202 and a job failed five rounds later.
        await self.runner.known_or_404(req.model)
        if self.store.active() >= self.max_jobs:
            raise ApiError(
                429,
                f"this peer holds {self.max_jobs} jobs already; retry later or submit elsewhere",
                type="rate_limit_error",
                code="queue_full",
                headers=(("retry-after", "5"),),
            )
        body_ref = None
        packed = json.dumps(body).encode()
        if len(packed) > INLINE:  # held by two more members before we say accepted
            body_ref = await self._store_blob(packed, JOB_TTL + self.retention)
        job = Job(
            id=jid,
            model=req.model,
            chat=chat,
            body=body,
            priority=priority,
            state=JobState.QUEUED,
            created=self._clock(),
            client=client,
            acceptor=self.node.hex(),
            body_ref=body_ref,
        )
        self.store.add(job)
        if not await self._publish(job):  # nobody else knows of it: it would die with us
            self.store.delete(jid)
            if body_ref is not None and self.blobs is not None:
                await self.blobs.delete(body_ref)
            raise retry_later("could not replicate the job in the DHT", "not_replicated")
        self._wake.set()
        return 202, job.public() | ({"secret": secret} if secret else {})

    async def _taken_elsewhere(self, jid: str, credential: str) -> bool:
        """Does the DHT hold job ``jid`` accepted elsewhere for another owner?"""
        assert self.dht is not None
        try:
            accepted = await self.dht.get_records(f"job:{jid}")
        except Exception as e:  # no answer: the id is taken only if we know it is
            log.debug("job %s: checking the id: %s", jid, e)
            return False
        return any(not _tagged(jid, p, d, credential) for p, d in accepted)

    async def status(self, jid: str, credential: str | None = None) -> dict[str, Any]:
        """The job as its owner (``credential``) may see it; 404 to anyone else."""
        if not _ID.match(jid):
            raise ApiError(400, "malformed job id", param="id")
        missing = ApiError(
            404, f"no job {jid} of yours on this peer or in the DHT", code="job_not_found"
        )
        if credential is None:
            raise missing
        local = self.store.get(jid)
        if local is not None and local.state.finished:
            if not local.owned_by(credential):
                raise missing
            return local.public()
        mine = [] if self.dht is None else await self.trusted_records(jid, credential)
        if local is not None and local.owned_by(credential):
            mine.append({**local.public(), "state": local.state})
        best = merge([d for d in mine if _readable(d)])
        if best is None:
            raise missing
        job = job_from_doc(best)
        if job.state is JobState.DELETED:
            raise missing
        if job.state is JobState.DONE and job.result is None and job.result_ref is not None:
            job = dataclasses.replace(job, result=await self._read_result(job.result_ref))
        return job.public()

    async def _store_blob(self, data: bytes, ttl: float) -> BlobRef:
        if self.blobs is None:
            raise ApiError(413, f"this agent takes job payloads up to {INLINE} bytes")
        try:
            return await self.blobs.store(data, ttl)
        except BlobError as e:
            message = f"could not store the payload with enough members: {e}"
            raise retry_later(message, "not_replicated") from None

    async def _read_result(self, ref: BlobRef) -> Any:
        try:
            if self.blobs is None:
                raise BlobError("this agent reads no blobs")
            return json.loads(await self.blobs.fetch(ref))
        except (BlobError, ValueError) as e:
            message = f"the job is done but its result could not be read now ({e})"
            raise retry_later(message, "result_unavailable") from None

    # -- DHT ------------------------------------------------------------------

    async def _publish(self, job: Job, *, key: str | None = None) -> bool:
        """Put the job's record; False if that failed (logged: the local copy
        is durable, and the DHT catches up at the next change)."""
        if self.dht is None:
            return True
        return await replicate(self.dht, key or f"job:{job.id}", encode_record(job, self.owner))

    async def trusted_records(
        self, jid: str, credential: str, kind: str = "job"
    ) -> list[dict[str, Any]]:
        """The records of ``credential``'s job ``jid`` a reader may trust: the
        acceptor's (the ``job:`` publisher its tag is bound to) and, once the
        acceptor is dead, those of the claimant that won the run
        (``first_claimant`` of live members), with the acceptor's tag."""
        assert self.dht is not None
        try:
            accepted = await self.dht.get_records(f"{kind}:{jid}")
        except Exception as e:
            log.debug("lookup %s:%s failed: %s", kind, jid, e)
            return []
        acceptor = first_claimant((p, d) for p, d in accepted if _tagged(jid, p, d, credential))
        docs = [d for p, d in accepted if p == acceptor]
        if acceptor is None or not self.dht.is_dead(acceptor):
            return docs  # while the acceptor lives, only its word counts
        try:
            runs = await self.dht.get_records(f"{kind}run:{jid}")
        except Exception as e:
            log.debug("lookup %srun:%s failed: %s", kind, jid, e)
            return docs
        winner = self._read_winner(runs)
        return docs + [d for p, d in runs if p == winner and _tagged(jid, acceptor, d, credential)]

    def _read_winner(self, runs: list[tuple[bytes, dict[str, Any]]]) -> bytes | None:
        """Whose run a reader believes: the winning claim of live members, or
        of a member that finished the run and died since (its result is held
        by others); a dead claimant that never finished is passed over."""
        assert self.dht is not None
        left = [(p, d) for p, d in runs if self.dht.is_member(p)]
        while left:
            winner = first_claimant(left)
            assert winner is not None
            if not self.dht.is_dead(winner) or any(p == winner and _finished(d) for p, d in left):
                return winner
            left = [(p, d) for p, d in left if p != winner]
        return None

    # -- running ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[Job](0)
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._worker, receive.clone())
            if self.dht is not None:
                nursery.start_soon(self._takeover_loop)
            nursery.start_soon(self._prune_loop)  # its deletions wait on peers: not here
            task_status.started()
            running: set[str] = set()
            while True:
                self._wake = trio.Event()
                waiting = False  # a low job yields: look again in LOW_WAIT
                for job in self.store.queued():
                    if job.id in running:
                        continue
                    if job.priority is Priority.LOW and self.runner.busy(job.model):
                        waiting = True
                        continue  # low yields under load
                    if not self.store.start(job.id):  # cancelled while we waited on a worker
                        continue
                    running.add(job.id)
                    await send.send(job)
                running = {j for j in running if _state(self.store.get(j)) is JobState.RUNNING}
                wait = min(LOW_WAIT if waiting else math.inf, PRUNE_INTERVAL)
                with trio.move_on_after(wait):
                    await self._wake.wait()

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception as e:
                self.faults.caught(Component.JOBS, e, "deleting finished jobs")
            await trio.sleep(PRUNE_INTERVAL)

    async def prune(self) -> int:
        """Delete finished jobs past their retention (here, their blobs, their
        records), and forget old takeovers."""
        now = self._clock()
        gone = self.store.prune(now - self.retention)
        for job in gone:
            await self._forget(job)
        if gone:
            log.info("deleted %d finished jobs older than %.0f s", len(gone), self.retention)
        for jid, at in list(self._claimed.items()):
            if now - at > JOB_TTL:  # its records are gone from the DHT too
                del self._claimed[jid]
        return len(gone)

    async def _worker(self, receive: trio.MemoryReceiveChannel[Job]) -> None:
        async for job in receive:
            try:
                await self._run_one(job, publish_key=None)
            except Exception as e:
                self.faults.caught(Component.JOBS, e, f"job {job.id}")
                self.store.set_state(job.id, JobState.FAILED, error=f"internal error: {e}"[:500])
            self._wake.set()

    async def _keep_result(self, final: Job) -> Job:
        """A result over ``INLINE`` bytes is stored with two more members
        before the job is done; tried ``MAX_ATTEMPTS`` times (with backoff),
        then the job fails: a result that only we hold is one death from lost."""
        if final.state is not JobState.DONE or final.result is None or final.result_ref:
            return final
        data = json.dumps(final.result).encode()
        if len(data) <= INLINE:
            return final
        if len(data) > MAX_BODY:
            error = f"the result is {len(data)} bytes, over the {MAX_BODY}-byte limit"
            return dataclasses.replace(final, state=JobState.FAILED, result=None, error=error)
        error = "the result could not be stored with enough members"
        if self.blobs is None:
            return dataclasses.replace(final, state=JobState.FAILED, result=None, error=error)
        blobs, stored = self.blobs, []

        async def store() -> bool:
            try:
                stored.append(await blobs.store(data, self.retention + JOB_TTL))
                return True
            except BlobError as e:
                log.warning("job %s: could not store its result: %s", final.id, e)
                return False

        if await retried(store):
            return dataclasses.replace(final, result_ref=stored[0])
        return dataclasses.replace(final, state=JobState.FAILED, result=None, error=error)

    async def _run_one(self, job: Job, *, publish_key: str | None) -> Job:
        running = Job(**{**_fields(job), "state": JobState.RUNNING, "attempts": job.attempts + 1})
        await self._publish(running, key=publish_key)
        try:
            req = parse_completion(json.dumps(job.body).encode(), chat=job.chat)
            priority = Priority(job.priority)
        except (ApiError, ValueError) as e:  # a record any key holder may have written
            final = Job(**{**_fields(running), "state": JobState.FAILED, "error": f"bad job: {e}"})
            return await self._finish(job, final, publish_key)
        try:
            data, served_by = await self.runner.fetch(req, priority)
            result = json.loads(data)
            final = Job(
                **{
                    **_fields(running),
                    "state": JobState.DONE,
                    "result": result,
                    "served_by": served_by,
                }
            )
        except JobFailed as e:
            final = Job(**{**_fields(running), "state": JobState.FAILED, "error": str(e)})
        except Exception as e:
            if running.attempts >= MAX_ATTEMPTS:
                final = Job(**{**_fields(running), "state": JobState.FAILED, "error": str(e)})
            else:
                log.info("job %s: try %d failed (%s); retrying", job.id, running.attempts, e)
                if publish_key is None:
                    self.store.set_state(job.id, JobState.RUNNING, attempts=running.attempts)
                await trio.sleep(RETRY_DELAY * 2 ** (running.attempts - 1))
                if publish_key is None:
                    self.store.set_state(job.id, JobState.QUEUED, attempts=running.attempts)
                    return running
                return await self._run_one(running, publish_key=publish_key)
        return await self._finish(job, final, publish_key)

    async def _finish(self, job: Job, final: Job, publish_key: str | None) -> Job:
        """Record ``final`` in the DHT, then here: a job this agent reports
        finished is finished for every other agent too (reported here first,
        its death before the DHT had it would leave a stale record, read as
        still running, and a takeover would run it again)."""
        final = await self._keep_result(final)
        await retried(lambda: self._publish(final, key=publish_key))
        if publish_key is None:
            self.store.set_state(
                job.id,
                final.state,
                result=final.result,
                error=final.error,
                attempts=final.attempts,
                served_by=final.served_by,
                result_ref=final.result_ref,
            )
        else:  # a job taken over: keep a local copy too, so status answers here
            if self.store.get(job.id) is None:
                self.store.add(final)
            else:
                self.store.set_state(
                    job.id,
                    final.state,
                    result=final.result,
                    error=final.error,
                    result_ref=final.result_ref,
                )
        log.info("job %s %s", job.id, final.state)
        return final

    async def _takeover_loop(self) -> None:
        assert self.dht is not None
        while True:
            await trio.sleep(TAKEOVER_INTERVAL * (0.5 + self._rng.random()))
            for key, publisher, doc in self.dht.held_jobs():
                jid = key.removeprefix("job:")
                if doc.get("id") != jid or not _ID.match(jid):
                    continue  # a record that names another job than its key: a forgery
                if _finished(doc) or jid in self._claimed:
                    continue
                if publisher == self.node or not self.dht.is_dead(publisher):
                    continue
                try:
                    await self._take_over(jid, publisher, doc)
                except Exception as e:
                    self._claimed[jid] = self._clock()  # not again: it would fail again
                    self.faults.caught(Component.JOBS, e, f"taking over job {jid}")

    def _may_run(self, node: bytes) -> bool:
        """May ``node``'s claim to run a job count: a live member (a key that
        never joined the swarm cannot take a job over)."""
        assert self.dht is not None
        return self.dht.is_member(node) and not self.dht.is_dead(node)

    async def _take_over(self, jid: str, acceptor: bytes, doc: dict[str, Any]) -> None:
        """Claim a dead acceptor's job in jobrun:<id>; run it if our claim is first."""
        assert self.dht is not None
        runs = await self.dht.get_records(f"jobrun:{jid}")
        if any(_finished(d) for _, d in runs):
            self._claimed[jid] = self._clock()
            return
        if any(self._may_run(p) for p, _ in runs):
            return  # a live member runs it
        # the tag is bound to the node that published the record, whatever it says
        job = dataclasses.replace(job_from_doc(doc), acceptor=acceptor.hex())
        if job.body_ref is not None:  # read before claiming: a claim we cannot run blocks others
            if self.blobs is None:
                raise BlobError("this agent reads no blobs")
            try:
                body = json.loads(await self.blobs.fetch(job.body_ref))
            except BlobError as e:
                log.info("job %s: cannot read its request yet (%s)", jid, e)
                return
            job = dataclasses.replace(job, body=body)
        claim = Job(**{**_fields(job), "state": JobState.RUNNING})
        await self._publish(claim, key=f"jobrun:{jid}")
        runs = await self.dht.get_records(f"jobrun:{jid}")
        if first_claimant((p, d) for p, d in runs if self._may_run(p)) not in (None, self.node):
            return
        self._claimed[jid] = self._clock()
        log.info("job %s: its acceptor is dead; running it here", jid)
        await self._run_one(job, publish_key=f"jobrun:{jid}")


def retry_later(message: str, code: str) -> ApiError:
    """A 503 that a retry in a moment may not get (a peer, a replica, was
    missing): OpenAI's shape, with ``retry-after``."""
    return ApiError(
        503,
        f"{message}; retry",
        type="server_error",
        code=code,
        headers=(("retry-after", "2"),),
    )


async def retried(
    attempt: Callable[[], Awaitable[bool]], tries: int = MAX_ATTEMPTS, delay: float | None = None
) -> bool:
    """``attempt`` until it says True, at most ``tries`` times, waiting
    ``delay`` (``RETRY_DELAY``), doubling, between two; whether it did."""
    delay = RETRY_DELAY if delay is None else delay
    for n in range(tries):
        if await attempt():
            return True
        if n + 1 < tries:
            await trio.sleep(delay * 2**n)
    return False


async def replicate(dht: JobDht, key: str, value: bytes) -> bool:
    """Put a record; True only if a node besides this one took it (or this
    one knows no other): a record only we hold dies with us."""
    try:
        stored = await dht.put(key, value, JOB_TTL)
    except Exception as e:
        log.warning("could not replicate %s: %s", key, e)
        return False
    if stored < 2 and not dht.alone():
        log.warning("could not replicate %s: no other node took it", key)
        return False
    return True


def first_claimant(runs: Iterable[tuple[bytes, dict[str, Any]]]) -> bytes | None:
    """Who won the run of a job taken over: the claim its holders saw first
    (``"_seen"``: a claimant's own sequence number says nothing about when it
    claimed); claims seen within ``SIGHT_TOLERANCE`` of the first are a
    race, won by the lowest node id, so every reader agrees."""
    seen = [(float(d.get("_seen", math.inf)), p) for p, d in runs]
    if not seen:
        return None
    earliest = min(t for t, _ in seen)
    return min(p for t, p in seen if t <= earliest + SIGHT_TOLERANCE)


def _tagged(jid: str, acceptor: bytes, doc: dict[str, Any], credential: str) -> bool:
    """Does ``doc`` carry the tag of ``credential``'s job ``jid`` accepted by ``acceptor``?"""
    return _owns(jid, acceptor, str(doc.get("client") or ""), credential)


# a tuple, compared by ==: a record's state may be anything, unhashable too
_FINISHED = tuple(s for s in JobState if s.finished)


def _finished(doc: dict[str, Any]) -> bool:
    """Does a record (anyone's) say its job is over?"""
    return doc.get("state") in _FINISHED


def _needed(credential: str | None) -> str:
    """The caller's credential, which listing and cancelling need."""
    if credential is None:
        raise ApiError(
            401,
            "show the credential the jobs were submitted with (`Authorization: Bearer ...`)",
            type="authentication_error",
            code="credential_required",
        )
    return credential


def _taken(jid: str) -> ApiError:
    return ApiError(
        409, f"job id {jid} is taken by another owner: choose another", code="job_id_taken"
    )


def _readable(doc: dict[str, Any]) -> bool:
    """Does a job record (anyone's) make a job?"""
    try:
        job_from_doc(doc)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _state(job: Job | None) -> JobState | None:
    return None if job is None else job.state


def _fields(job: Job) -> dict[str, Any]:
    return {f: getattr(job, f) for f in Job.__dataclass_fields__}
