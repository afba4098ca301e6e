"""The OpenAI Batch API over durable jobs: ``/v1/files`` and ``/v1/batches``.

A client uploads a JSONL file (``purpose`` ``batch``; one request per line:
``custom_id``, ``method`` POST, ``url``, ``body``), creates a batch on it,
and later reads the output and error files, as with OpenAI's API (the
official ``openai`` client works unchanged). A file's content is stored as
blobs (``serve.blobs``: its maker and two more members hold it) and its
description in the DHT (``file:<id>``); a batch is a DHT record
(``batch:<id>``) owned by the agent that accepted it, which runs it: each
line becomes a durable job (``<batch id>-<line>``, low priority: batches
take what interactive traffic leaves), at most ``IN_FLIGHT`` at once, so the
lines fan out over the swarm's servers through the router. When every line
is finished the runner writes the output and error files (blobs again) and
marks the batch ``completed``; cancelled and expired batches keep what was
done. If the runner dies, a member holding the batch's record claims it in
``batchrun:<id>`` (as jobs are taken over) and resumes: lines already
submitted are jobs in the DHT (themselves taken over if their acceptor died),
the rest it submits again under the same ids; a job id is run at most once.

Ownership is as for jobs: a file or batch keeps a tag of the bearer
credential that created it (``jobs.owner_tag``); only that credential reads,
lists, cancels or deletes it (others get 404). The batch's lines run under a
secret of the batch's own, kept in its sealed record, so a member that takes
it over can read and submit them.

Limits (all in this module, documented in docs/jobs.md): an input file of
at most ``MAX_BODY`` bytes (the API's body limit) and ``MAX_LINES`` lines;
output and error files of at most ``MAX_CHUNKS`` blobs each; ``MAX_METADATA``
bytes of metadata. Files and finished batches are deleted with their blobs
``retention`` after they were made or finished, or at once on ``DELETE``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from random import Random
from typing import Any

import trio

from hexamesh.faults import Component, Faults
from hexamesh.fileio import open_private_db
from hexamesh.limits import MAX_BODY
from hexamesh.serve.blobs import BlobError, BlobRef
from hexamesh.serve.http import HttpConnection, Request
from hexamesh.serve.jobs import (
    JOB_TTL,
    TAKEOVER_INTERVAL,
    Jobs,
    JobState,
    _needed,
    _owns,
    first_claimant,
    owner_tag,
    replicate,
    retried,
    retry_later,
)
from hexamesh.serve.requests import ApiError

__all__ = ["BatchStore", "Batches"]

log = logging.getLogger(__name__)

MAX_LINES = 50_000  # requests in one batch (OpenAI's bound)
MAX_CHUNKS = 6  # blobs (of MAX_BODY bytes) in an output or error file: its refs fit the record
MAX_METADATA = 1024  # bytes of a batch's metadata, as JSON (it travels in the DHT record)
IN_FLIGHT = 32  # lines of one batch queued or running as jobs at once
POLL_INTERVAL = 1.0  # s between a runner's looks at its lines' jobs
WINDOW = 24 * 3600.0  # s: the only completion window, "24h"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
LIST_LIMIT = 100  # files or batches one listing returns at most
MAX_PARTS = 8  # parts of an upload's form (two are used: `file` and `purpose`)
# Batches running (not yet final) at one agent, and of one credential there:
# each holds its input in memory and keeps up to IN_FLIGHT jobs queued
MAX_RUNNING = 16
MAX_RUNNING_PER_CLIENT = 4
_FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
_OUTPUT_ID = re.compile(r"^file-(batch_[0-9a-f]{32})-(output|error)$")
_BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
_FINAL = ("completed", "failed", "expired", "cancelled")


class BatchStore:
    """Files and batches held here (their descriptions: contents are blobs)."""

    def __init__(self, path: Path) -> None:
        self.db = open_private_db(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS docs (kind TEXT, id TEXT, doc TEXT, created REAL,"
            " PRIMARY KEY (kind, id))"
        )

    def put(self, kind: str, doc: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO docs VALUES (?,?,?,?)",
            (kind, doc["id"], json.dumps(doc), doc["created_at"]),
        )

    def get(self, kind: str, did: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT doc FROM docs WHERE kind=? AND id=?", (kind, did)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def all(self, kind: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT doc FROM docs WHERE kind=? ORDER BY created DESC", (kind,)
        ).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def delete(self, kind: str, did: str) -> None:
        self.db.execute("DELETE FROM docs WHERE kind=? AND id=?", (kind, did))


def _owned(doc: dict[str, Any], credential: str | None) -> bool:
    """Does ``credential`` own a file or batch (the tag is bound to its id and acceptor)?"""
    if credential is None:
        return False
    return _owns(str(doc.get("id")), str(doc.get("acceptor")), str(doc.get("client")), credential)


def _public_file(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "object", "bytes", "created_at", "filename", "purpose", "status")
    return {k: doc.get(k) for k in keys} | {"expires_at": doc.get("expires_at")}


_BATCH_FIELDS = (
    "id",
    "object",
    "endpoint",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "metadata",
)


def _public_batch(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc.get(k) for k in _BATCH_FIELDS}


def parse_form(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body: field name -> (file name, bytes); raises ApiError."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "upload the file as multipart/form-data (fields `file` and `purpose`)")
    if body.count(b"\r\n--") > MAX_PARTS:  # the parser's cost grows with the parts
        raise ApiError(400, f"a form of at most {MAX_PARTS} parts")
    head = b"content-type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ApiError(400, "malformed multipart/form-data body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


def parse_lines(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A batch's input: its requests, and the errors that make it fail
    (OpenAI's validation: every line well formed, ids unique, one endpoint)."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    text = data.decode("utf-8", errors="replace").splitlines()
    if len([t for t in text if t.strip()]) > MAX_LINES:
        return [], [{"code": "too_many_lines", "message": f"at most {MAX_LINES} lines"}]
    for n, raw in enumerate(text, 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):
            errors.append({"code": "invalid_json_line", "message": "not JSON", "line": n})
            continue
        problem = _line_problem(line, endpoint, seen)
        if problem:
            errors.append({"code": "invalid_request", "message": problem, "line": n})
            continue
        seen.add(line["custom_id"])
        lines.append(line)
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests"})
    return lines, errors


def _line_problem(line: object, endpoint: str, seen: set[str]) -> str | None:
    if not isinstance(line, dict):
        return "a line must be a JSON object"
    cid = line.get("custom_id")
    if not isinstance(cid, str) or not 0 < len(cid) <= 512:
        return "`custom_id` must be a string of 1-512 characters"
    if cid in seen:
        return f"`custom_id` {cid!r} is used twice"
    if line.get("method") != "POST":
        return "`method` must be POST"
    if line.get("url") != endpoint:
        return f"`url` must be the batch's endpoint, {endpoint}"
    body = line.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "`body` must be an object naming a `model`"
    if body.get("stream"):
        return "a batch request is not streamed"
    return None


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + MAX_BODY] for i in range(0, len(data), MAX_BODY)] or [b""]


class Batches:
    """The /v1/files and /v1/batches endpoints, the batch runners and the
    takeover of batches whose runner died."""

    def __init__(
        self,
        store: BatchStore,
        jobs: Jobs,
        *,
        retention: float,
        clock: Callable[[], float] = time.time,
        rng: Random | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.retention = retention
        self._clock = clock
        self._rng = rng or Random()
        self.faults = faults or Faults()
        self._start: trio.MemorySendChannel[dict[str, Any]] | None = None
        self._running: set[str] = set()
        self._settled: dict[str, float] = {}  # batch id -> when we stopped looking at it

    @property
    def node(self) -> bytes:
        return self.jobs.node

    # -- HTTP --------------------------------------------------------------------

    async def handle(self, request: Request, conn: HttpConnection) -> bool:
        path, method = request.path.rstrip("/"), request.method
        credential = _needed(request.bearer)
        status = 200
        if path == "/v1/files" and method == "POST":
            doc = await self.upload(request, credential)
        elif path == "/v1/files" and method == "GET":
            doc = self._listing("file", credential, _public_file)
        elif path.startswith("/v1/files/") and path.endswith("/content") and method == "GET":
            fid = path.removeprefix("/v1/files/").removesuffix("/content")
            data = await self.content(fid, credential)
            await conn.respond(
                200, data, content_type="application/jsonl", keep_alive=request.keep_alive
            )
            return True
        elif path.startswith("/v1/files/") and method == "GET":
            doc = _public_file(await self._file(path.removeprefix("/v1/files/"), credential))
        elif path.startswith("/v1/files/") and method == "DELETE":
            doc = await self.delete_file(path.removeprefix("/v1/files/"), credential)
        elif path == "/v1/batches" and method == "POST":
            doc = await self.create(request.body, credential)
        elif path == "/v1/batches" and method == "GET":
            doc = self._listing("batch", credential, _public_batch)
        elif path.startswith("/v1/batches/") and path.endswith("/cancel") and method == "POST":
            bid = path.removeprefix("/v1/batches/").removesuffix("/cancel")
            doc = await self.cancel(bid, credential)
        elif path.startswith("/v1/batches/") and method == "GET":
            doc = _public_batch(await self._batch(path.removeprefix("/v1/batches/"), credential))
        else:
            raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")
        await conn.respond(status, json.dumps(doc).encode(), keep_alive=request.keep_alive)
        return True

    def _listing(
        self, kind: str, credential: str, public: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """The caller's files or batches made here, newest first."""
        data = [public(d) for d in self.store.all(kind) if _owned(d, credential)][:LIST_LIMIT]
        return {"object": "list", "data": data, "has_more": len(data) >= LIST_LIMIT}

    # -- files ---------------------------------------------------------------------

    async def upload(self, request: Request, credential: str) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        fields = await trio.to_thread.run_sync(parse_form, ctype, request.body)
        purpose = fields.get("purpose", (None, b""))[1].decode(errors="replace")
        if purpose != "batch":
            raise ApiError(400, "`purpose` must be batch: files here are batch inputs")
        if "file" not in fields:
            raise ApiError(400, "the form has no `file` field", param="file")
        filename, data = fields["file"]
        if not data.strip():
            raise ApiError(400, "the file is empty", param="file")
        now = self._clock()
        fid = f"file-{secrets.token_hex(16)}"
        refs = await self._store_chunks(data, self.retention + WINDOW)
        doc = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(now),
            "expires_at": int(now + self.retention),
            "filename": (filename or "input.jsonl")[:256],
            "purpose": "batch",
            "status": "processed",
            "chunks": [r.doc() for r in refs],
            "client": owner_tag(fid, self.node, credential),
            "acceptor": self.node.hex(),
        }
        self.store.put("file", doc)
        if not await self._publish(f"file:{fid}", doc):
            self.store.delete("file", fid)
            await self._delete_chunks(doc)
            raise _not_replicated()
        return _public_file(doc)

    async def _store_chunks(self, data: bytes, ttl: float) -> list[BlobRef]:
        if self.jobs.blobs is None:
            raise ApiError(503, "this agent stores no files", type="server_error")
        try:
            return [await self.jobs.blobs.store(c, ttl) for c in _chunks(data)]
        except BlobError as e:
            message = f"could not store the file with enough members: {e}"
            raise retry_later(message, "not_replicated") from None

    async def _read_chunks(self, chunks: list[Any]) -> bytes:
        if self.jobs.blobs is None:
            raise ApiError(503, "this agent reads no files", type="server_error")
        try:
            return b"".join([await self.jobs.blobs.fetch(BlobRef.from_doc(c)) for c in chunks])
        except (BlobError, ValueError) as e:
            raise retry_later(f"the file could not be read now ({e})", "file_unavailable") from None

    async def _delete_chunks(self, doc: dict[str, Any], field: str = "chunks") -> None:
        if self.jobs.blobs is None:
            return
        for chunk in doc.get(field) or []:
            with contextlib.suppress(ValueError):
                ref = BlobRef.from_doc(chunk)
                if self.node in ref.holders:
                    await self.jobs.blobs.delete(ref)

    async def _file(self, fid: str, credential: str) -> dict[str, Any]:
        """An input file's description, or an output file's (from its batch)."""
        output = _OUTPUT_ID.match(fid)
        if output:
            batch = await self._batch(output.group(1), credential)
            kind = output.group(2)
            chunks = batch.get(f"{kind}_chunks")
            if not chunks or batch.get(f"{kind}_file_id") != fid:
                raise _no_file(fid)
            return {
                "id": fid,
                "object": "file",
                "bytes": batch.get(f"{kind}_bytes", 0),
                "created_at": batch.get("completed_at") or batch.get("created_at"),
                "filename": f"batch_{kind}.jsonl",
                "purpose": "batch_output",
                "status": "processed",
                "chunks": chunks,
            }
        if not _FILE_ID.match(fid):
            raise _no_file(fid)
        local = self.store.get("file", fid)
        if local is not None:
            if not _owned(local, credential):
                raise _no_file(fid)
            return local
        docs = await self.jobs.trusted_records(fid, credential, kind="file")
        live = [d for d in docs if d.get("state") != JobState.DELETED and d.get("chunks")]
        if not live:
            raise _no_file(fid)
        return live[0]

    async def content(self, fid: str, credential: str) -> bytes:
        return await self._read_chunks(list((await self._file(fid, credential))["chunks"]))

    async def delete_file(self, fid: str, credential: str) -> dict[str, Any]:
        local = self.store.get("file", fid) if _FILE_ID.match(fid) else None
        if local is None or not _owned(local, credential):
            raise ApiError(
                404,
                f"no file {fid} of yours was uploaded here (delete it where it was)",
                code="file_not_found",
            )
        await self._forget_file(local)
        return {"id": fid, "object": "file", "deleted": True}

    async def _forget_file(self, doc: dict[str, Any]) -> None:
        self.store.delete("file", doc["id"])
        await self._delete_chunks(doc)
        await self._tombstone(f"file:{doc['id']}", doc)

    async def _tombstone(self, key: str, doc: dict[str, Any]) -> None:
        if self.jobs.dht is None:
            return
        gone = {k: doc.get(k) for k in ("id", "client", "acceptor")} | {"state": "deleted"}
        await self._publish(key, gone)
        self.jobs.dht.withdraw(key)

    # -- batches -------------------------------------------------------------------

    async def create(self, raw: bytes, credential: str) -> dict[str, Any]:
        try:
            ask = json.loads(raw)
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(ask, dict):
            raise ApiError(400, "the body must be a JSON object")
        endpoint = ask.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"`endpoint` must be one of {', '.join(ENDPOINTS)}")
        if ask.get("completion_window", "24h") != "24h":
            raise ApiError(400, "`completion_window` must be 24h")
        metadata = ask.get("metadata") or {}
        if not isinstance(metadata, dict) or len(json.dumps(metadata)) > MAX_METADATA:
            raise ApiError(400, f"`metadata` must be an object of at most {MAX_METADATA} bytes")
        fid = ask.get("input_file_id")
        if not isinstance(fid, str):
            raise ApiError(400, "`input_file_id` is required", param="input_file_id")
        input_file = await self._file(fid, credential)  # 404 unless the caller's
        running = [d for d in self.store.all("batch") if d.get("status") not in _FINAL]
        if len(running) >= MAX_RUNNING or (
            sum(1 for d in running if _owned(d, credential)) >= MAX_RUNNING_PER_CLIENT
        ):
            raise ApiError(
                429,
                "too many batches running here (yours or all): retry when one is done",
                type="rate_limit_error",
                code="batches_full",
                headers=(("retry-after", "60"),),
            )
        now = self._clock()
        bid = f"batch_{secrets.token_hex(16)}"
        doc: dict[str, Any] = {field: None for field in _BATCH_FIELDS} | {
            "id": bid,
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": fid,
            "completion_window": "24h",
            "status": "validating",
            "created_at": int(now),
            "expires_at": int(now + WINDOW),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
            "client": owner_tag(bid, self.node, credential),
            "acceptor": self.node.hex(),
            "input_chunks": input_file["chunks"],  # a runner reads them without the credential
            "secret": secrets.token_urlsafe(24),  # the lines' jobs belong to it
        }
        self.store.put("batch", doc)
        if not await self._publish(f"batch:{bid}", doc):
            self.store.delete("batch", bid)
            raise _not_replicated()
        self._launch(doc)
        return _public_batch(doc)

    async def _batch(self, bid: str, credential: str) -> dict[str, Any]:
        if not _BATCH_ID.match(bid):
            raise _no_batch(bid)
        local = self.store.get("batch", bid)
        if local is not None:
            if not _owned(local, credential):
                raise _no_batch(bid)
            return local
        docs = await self.jobs.trusted_records(bid, credential, kind="batch")
        docs = [d for d in docs if d.get("state") != "deleted" and d.get("status")]
        if not docs:
            raise _no_batch(bid)
        return max(docs, key=_progress)

    async def cancel(self, bid: str, credential: str) -> dict[str, Any]:
        local = self.store.get("batch", bid) if _BATCH_ID.match(bid) else None
        if local is None or not _owned(local, credential):
            raise ApiError(
                404,
                f"no batch {bid} of yours runs here (cancel it where it was created)",
                code="batch_not_found",
            )
        if local["status"] in ("validating", "in_progress", "finalizing"):
            local |= {"status": "cancelling", "cancelling_at": int(self._clock())}
            self.store.put("batch", local)
            await self._publish(self._key(local), local)
        return _public_batch(local)

    def _key(self, doc: dict[str, Any]) -> str:
        mine = doc.get("acceptor") == self.node.hex()
        return f"batch:{doc['id']}" if mine else f"batchrun:{doc['id']}"

    async def _publish(self, key: str, doc: dict[str, Any]) -> bool:
        if self.jobs.dht is None:
            return True
        return await replicate(self.jobs.dht, key, _encode(doc))

    # -- running -----------------------------------------------------------------

    def _launch(self, doc: dict[str, Any]) -> None:
        if self._start is not None and doc["id"] not in self._running:
            self._running.add(doc["id"])
            self._start.send_nowait(doc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._start = send
        async with trio.open_nursery() as nursery:
            for doc in self.store.all("batch"):  # a restart: ours go on where they were
                if doc.get("status") not in _FINAL:
                    self._launch(doc)
            nursery.start_soon(self._upkeep)
            task_status.started()
            async for doc in receive:
                nursery.start_soon(self._run_guarded, doc)

    async def _run_guarded(self, doc: dict[str, Any]) -> None:
        try:
            await self.drive(doc)
        except Exception as e:
            self.faults.caught(Component.JOBS, e, f"batch {doc.get('id')}")
        finally:
            self._running.discard(doc["id"])

    async def drive(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Run a batch to its end (resumable: lines already submitted are
        found as jobs under their ids); returns its final description."""
        bid = doc["id"]
        resumed = doc["status"] != "validating"
        data = await self._read_chunks(list(doc["input_chunks"]))
        lines, errors = parse_lines(data, doc["endpoint"])
        if doc["status"] == "validating":
            now = int(self._clock())
            if errors:
                doc |= {"status": "failed", "failed_at": now}
                doc["errors"] = {"object": "list", "data": errors[:20]}
                return await self._save(doc)
            doc |= {"status": "in_progress", "in_progress_at": now}
            doc["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
            await self._save(doc)
        outcome: dict[int, dict[str, Any]] = {}  # line -> its job, finished
        submitted: set[int] = set()
        if resumed:  # a restart or a takeover: lines already submitted are jobs somewhere
            for n in range(len(lines)):
                try:
                    await self.jobs.status(f"{bid}-{n}", doc["secret"])
                except ApiError as e:
                    if e.status == 404:
                        continue
                submitted.add(n)
        while True:
            doc = self.store.get("batch", bid) or doc  # a cancel arrives through the store
            stopping = doc["status"] == "cancelling" or self._clock() > doc["expires_at"]
            await self._look(doc, lines, outcome, submitted, stopping)
            counts = {
                "total": len(lines),
                "completed": sum(1 for o in outcome.values() if o.get("status") == "done"),
                "failed": sum(1 for o in outcome.values() if o.get("status") != "done"),
            }
            if counts != doc["request_counts"]:
                doc["request_counts"] = counts
                await self._save(doc)
            if len(outcome) == len(lines) or (stopping and not submitted - set(outcome)):
                return await self._finalise(doc, lines, outcome, stopping)
            await trio.sleep(POLL_INTERVAL)

    async def _look(
        self,
        doc: dict[str, Any],
        lines: list[dict[str, Any]],
        outcome: dict[int, dict[str, Any]],
        submitted: set[int],
        stopping: bool,
    ) -> None:
        """Read the lines' jobs; submit more up to IN_FLIGHT (none when stopping)."""
        secret = doc["secret"]
        for n in sorted(submitted - set(outcome)):
            jid = f"{doc['id']}-{n}"
            if stopping:
                with contextlib.suppress(ApiError):  # queued here: it will not run
                    await self.jobs.cancel(jid, secret)
            try:
                job = await self.jobs.status(jid, secret)
            except ApiError as e:
                if e.status == 404:  # accepted by a runner that died before it was known
                    submitted.discard(n)
                continue  # (else: a result not readable this moment)
            if JobState(job["status"]).finished:
                outcome[n] = job
        if stopping:
            return
        open_now = len(submitted - outcome.keys())
        for n, line in enumerate(lines):
            if open_now >= IN_FLIGHT:
                break
            if n in submitted or n in outcome:
                continue
            body = dict(line["body"]) | {"id": f"{doc['id']}-{n}", "priority": "low"}
            try:
                await self.jobs.submit(json.dumps(body).encode(), secret)
                submitted.add(n)
                open_now += 1
            except ApiError as e:
                if e.status in (429, 503):
                    break  # full, or not replicated: later
                outcome[n] = {"status": "failed", "error": str(e), "status_code": e.status}

    async def _finalise(
        self,
        doc: dict[str, Any],
        lines: list[dict[str, Any]],
        outcome: dict[int, dict[str, Any]],
        stopping: bool,
    ) -> dict[str, Any]:
        now = int(self._clock())
        doc |= {"status": "finalizing", "finalizing_at": now}
        output, errors = [], []
        for n, line in enumerate(lines):
            job = outcome.get(n)
            if job is None:
                continue
            rid = f"batch_req_{doc['id'][6:]}_{n}"
            row: dict[str, Any] = {"id": rid, "custom_id": line["custom_id"]}
            if job.get("status") == "done":
                response = {"status_code": 200, "request_id": rid, "body": job.get("result")}
                output.append(row | {"response": response, "error": None})
            else:
                message = str(job.get("error") or job.get("status"))
                code = job.get("status_code") or 500
                body = {"error": {"message": message, "type": "request_failed"}}
                response = {"status_code": code, "request_id": rid, "body": body}
                error = {"code": str(job.get("status")), "message": message}
                errors.append(row | {"response": response, "error": error})
        for kind, rows in (("output", output), ("error", errors)):
            if not rows:
                continue
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            if len(data) > MAX_CHUNKS * MAX_BODY:
                doc |= {"status": "failed", "failed_at": now}
                doc["errors"] = {
                    "object": "list",
                    "data": [{"code": "output_too_large", "message": f"{kind} file over limit"}],
                }
                return await self._save(doc)
            refs = await self._store_chunks(data, self.retention)
            doc[f"{kind}_chunks"] = [r.doc() for r in refs]
            doc[f"{kind}_bytes"] = len(data)
            doc[f"{kind}_file_id"] = f"file-{doc['id']}-{kind}"
        if stopping and doc["status"] != "failed":
            expired = self._clock() > doc["expires_at"] and doc.get("cancelling_at") is None
            final = "expired" if expired else "cancelled"
            doc |= {"status": final, f"{final}_at": int(self._clock())}
        else:
            doc |= {"status": "completed", "completed_at": int(self._clock())}
        for n in range(len(lines)):  # the answers are in the output file now
            with contextlib.suppress(ApiError):
                await self.jobs.delete(f"{doc['id']}-{n}", doc["secret"])
        return await self._save(doc)

    async def _save(self, doc: dict[str, Any]) -> dict[str, Any]:
        held = self.store.get("batch", doc["id"])
        if (
            held
            and held["status"] == "cancelling"
            and doc["status"] in ("validating", "in_progress")
        ):
            doc |= {
                "status": "cancelling",
                "cancelling_at": held["cancelling_at"],
            }  # came meanwhile
        if doc["status"] in _FINAL:  # the DHT first: what we call final is final everywhere
            await retried(lambda: self._publish(self._key(doc), doc), 3, POLL_INTERVAL)
            self.store.put("batch", doc)
            return doc
        self.store.put("batch", doc)
        await self._publish(self._key(doc), doc)
        return doc

    # -- upkeep: takeovers and retention -------------------------------------------

    async def _upkeep(self) -> None:
        while True:
            await trio.sleep(TAKEOVER_INTERVAL * (0.5 + self._rng.random()))
            try:
                await self._take_over()
                await self.prune()
            except Exception as e:
                self.faults.caught(Component.JOBS, e, "batch upkeep")

    async def _take_over(self) -> None:
        dht = self.jobs.dht
        if dht is None:
            return
        for key, publisher, doc in dht.held_jobs("batch:"):
            bid = key.removeprefix("batch:")
            if doc.get("id") != bid or not _BATCH_ID.match(bid) or not _well_formed(doc):
                continue  # a record that names another batch than its key: a forgery
            if doc.get("status") in _FINAL or doc.get("state") == "deleted":
                continue
            if bid in self._settled or bid in self._running or self.store.get("batch", bid):
                continue
            if publisher == self.node or not dht.is_dead(publisher):
                continue
            runs = await dht.get_records(f"batchrun:{bid}")
            if any(r.get("status") in _FINAL for _, r in runs):
                self._settled[bid] = self._clock()
                continue
            if any(self.jobs._may_run(p) for p, _ in runs):
                continue
            claim = dict(doc) | {"acceptor": publisher.hex()}
            await self._publish(f"batchrun:{bid}", claim)
            runs = await dht.get_records(f"batchrun:{bid}")
            winner = first_claimant((p, r) for p, r in runs if self.jobs._may_run(p))
            if winner not in (None, self.node):
                continue
            log.info("batch %s: its runner is dead; running it here", bid)
            self.store.put("batch", claim)
            self._launch(claim)

    async def prune(self) -> None:
        """Delete files and finished batches past their retention."""
        now = self._clock()
        for doc in self.store.all("file"):
            if doc["created_at"] < now - self.retention:
                await self._forget_file(doc)
        for doc in self.store.all("batch"):
            finished = max(doc.get(f"{s}_at") or 0 for s in _FINAL)
            if doc.get("status") in _FINAL and finished < now - self.retention:
                self.store.delete("batch", doc["id"])
                for kind in ("output", "error"):
                    await self._delete_chunks(doc, f"{kind}_chunks")
                await self._tombstone(self._key(doc), doc)
        for bid, at in list(self._settled.items()):
            if now - at > JOB_TTL:
                del self._settled[bid]


_ORDER = {"validating": 0, "in_progress": 1, "cancelling": 2, "finalizing": 3}


def _progress(doc: dict[str, Any]) -> int:
    return 4 if doc.get("status") in _FINAL else _ORDER.get(str(doc.get("status")), -1)


def _encode(doc: dict[str, Any]) -> bytes:
    import msgpack

    return bytes(msgpack.packb(doc))


def _well_formed(doc: dict[str, Any]) -> bool:
    """Has a batch record (anyone's) what a runner needs, of the right types?"""
    return (
        isinstance(doc.get("secret"), str)
        and isinstance(doc.get("input_chunks"), list)
        and doc.get("endpoint") in ENDPOINTS
        and isinstance(doc.get("expires_at"), int | float)
        and isinstance(doc.get("created_at"), int | float)
        and isinstance(doc.get("request_counts"), dict)
    )


def _not_replicated() -> ApiError:
    return retry_later("could not replicate the description in the DHT", "not_replicated")


def _no_file(fid: str) -> ApiError:
    return ApiError(404, f"no file {fid} of yours", code="file_not_found")


def _no_batch(bid: str) -> ApiError:
    return ApiError(404, f"no batch {bid} of yours", code="batch_not_found")
