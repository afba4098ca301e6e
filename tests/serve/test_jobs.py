"""Durable jobs: submit, status, priorities, idempotent retry, 429, failover,
restart recovery and takeover after the acceptor's death (in-memory DHT)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hexamesh.dht.records import MAX_VALUE
from hexamesh.serve import jobs as jobs_mod
from hexamesh.serve.blobs import Blobs
from hexamesh.serve.jobs import (
    Job,
    Jobs,
    JobState,
    JobStore,
    _fields,
    decode_record,
    encode_record,
    first_claimant,
    job_from_doc,
    owner_tag,
)
from hexamesh.serve.router import Priority
from hexamesh.wire import KeyRing
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, Door, attach_blobs, link, link_in_order, start_door


class MemoryJobDht:
    """A shared dict standing in for the DHT: key -> {publisher: (seq, value, first seen)}.
    Holders' first sight is a counter of stores (later stores, later sights)."""

    def __init__(
        self,
        store: dict[str, dict[bytes, tuple[int, bytes, float]]],
        node: bytes,
        dead: set[bytes],
        strangers: frozenset[bytes] = frozenset(),  # keys that never joined
    ) -> None:
        self.store, self.node, self.dead, self.strangers = store, node, dead, strangers
        self.withdrawn: set[str] = set()

    async def put(self, key: str, value: bytes, ttl: float) -> int:
        entries = self.store.setdefault(key, {})
        if key.startswith("job:") and entries and self.node not in entries:
            raise RuntimeError("single-owner key")
        seq = len(self.store) * 1000 + len(entries)
        stores = sum(len(e) for e in self.store.values())
        first = entries[self.node][2] if self.node in entries else float(stores)
        entries[self.node] = (seq, value, first)
        return seq

    async def get_records(self, key: str) -> list[tuple[bytes, dict[str, Any]]]:
        out = []
        for pub, (seq, value, first) in self.store.get(key, {}).items():
            doc = decode_record(value)
            assert doc is not None
            out.append((pub, {**doc, "_seq": seq, "_seen": first}))
        return out

    def held_jobs(self, prefix: str = "job:") -> list[tuple[str, bytes, dict[str, Any]]]:
        return [
            (k, pub, decode_record(v) or {})
            for k, entries in self.store.items()
            if k.startswith(prefix)
            for pub, (_, v, _) in entries.items()
        ]

    def is_dead(self, node: bytes) -> bool:
        return node in self.dead

    def is_member(self, node: bytes) -> bool:
        return node not in self.strangers

    def withdraw(self, key: str) -> None:
        self.withdrawn.add(key)

    def alone(self) -> bool:
        return False


async def start_jobs(
    nursery: trio.Nursery,
    door: Door,
    tmp: Path,
    dht: MemoryJobDht | None = None,
    max_jobs: int = 16,
    blobs: Blobs | None = None,
) -> Jobs:
    jobs = Jobs(
        JobStore(tmp / f"{door.view.node.hex()[:4]}.sqlite"),
        door.front,
        dht,
        owner=door.front.address,
        node=door.view.node,
        max_jobs=max_jobs,
        blobs=blobs,
    )
    door.front.mount("/v1/jobs", jobs)
    await nursery.start(jobs.run)
    return jobs


async def wait_done(
    client: httpx.AsyncClient, api: str, jid: str, timeout: float = 10
) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            r = await client.get(f"{api}/jobs/{jid}")
            assert r.status_code == 200, r.text
            doc = r.json()
            if doc["status"] in ("done", "failed"):
                return doc
            await trio.sleep(0.02)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_mod, "RETRY_DELAY", 0.01)
    monkeypatch.setattr(jobs_mod, "TAKEOVER_INTERVAL", 0.05)


OWNER = {"authorization": "Bearer owner-1"}  # the tests' client credential


async def test_submit_status_collect_and_idempotent_retry(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers=OWNER) as client,
    ):
        a = await start_door(nursery, ring, 1)
        dead = await start_door(nursery, ring, 2, engine=Behaviour(die_before=True))
        good = await start_door(nursery, ring, 3, engine=Behaviour())
        link_in_order(a, dead, good)
        await start_jobs(nursery, a, tmp_path)
        r = await client.post(
            f"{a.api}/jobs", json={"model": MODEL, "prompt": "a b", "max_tokens": 2, "id": "job-1"}
        )
        assert r.status_code == 202 and r.json()["id"] == "job-1" and r.json()["status"] == "queued"
        doc = await wait_done(client, a.api, "job-1")
        assert doc["status"] == "done" and doc["result"]["choices"][0]["text"] == " w2 w3"
        assert doc["served_by"] == good.view.node.hex()  # the dead server was failed over
        again = await client.post(
            f"{a.api}/jobs", json={"model": MODEL, "prompt": "a b", "max_tokens": 2, "id": "job-1"}
        )
        assert again.status_code == 200 and again.json()["status"] == "done"
        assert good.behaviour is not None and len(good.behaviour.served) == 1  # ran once
        chat = await client.post(
            f"{a.api}/jobs",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        )
        doc = await wait_done(client, a.api, chat.json()["id"])
        assert doc["result"]["choices"][0]["message"]["content"] == " w1"
        for bad, status in [
            ({"model": MODEL, "prompt": "x", "priority": "urgent"}, 400),
            ({"model": MODEL, "prompt": "x", "stream": True}, 400),
            ({"model": MODEL, "prompt": "x", "id": "no spaces"}, 400),
            ({"model": MODEL, "prompt": "x" * 7000}, 413),
        ]:
            r = await client.post(f"{a.api}/jobs", json=bad)
            assert r.status_code == status and "error" in r.json()
        assert (await client.get(f"{a.api}/jobs/unknown")).status_code == 404
        nursery.cancel_scope.cancel()


async def test_unknown_models_get_404_a_full_queue_429_priorities_order_the_queue(
    tmp_path: Path,
) -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, ring, 1, engine=Behaviour())
        store = JobStore(tmp_path / "q.sqlite")
        jobs = Jobs(store, a.front, None, owner="x", node=a.view.node, max_jobs=3)
        a.front.mount("/v1/jobs", jobs)  # not running: jobs stay queued
        # a model nobody serves: refused as a completion would be, nothing queued
        r = await client.post(f"{a.api}/jobs", json={"model": "typo", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert MODEL in r.json()["error"]["message"]  # it names what is served
        assert store.counts() == {}
        for prio in ("low", "medium", "high"):
            r = await client.post(
                f"{a.api}/jobs", json={"model": MODEL, "prompt": prio, "priority": prio, "id": prio}
            )
            assert r.status_code == 202
        r = await client.post(f"{a.api}/jobs", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert [j.id for j in store.queued()] == ["high", "medium", "low"]
        nursery.cancel_scope.cancel()


def test_a_restart_requeues_running_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    store.add(
        Job(
            id="j",
            model=MODEL,
            chat=False,
            body={"model": MODEL, "prompt": "x"},
            priority=Priority.MEDIUM,
            state=JobState.QUEUED,
        )
    )
    store.set_state("j", JobState.RUNNING)
    store.db.close()
    again = JobStore(tmp_path / "j.sqlite")
    job = again.get("j")
    assert job is not None and job.state == "queued"


@pytest.mark.parametrize("forged", [False, True])
async def test_a_dead_acceptors_job_is_taken_over_and_readable_anywhere(
    tmp_path: Path, forged: bool
) -> None:
    """``forged``: a key that never joined claimed the run first, with sequence
    number 0; its claim neither blocks the takeover nor wins it."""
    ring = KeyRing.generate()
    shared: dict[str, dict[bytes, tuple[int, bytes, float]]] = {}
    dead: set[bytes] = set()
    stranger = b"s" * 20
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers=OWNER) as client,
    ):
        server = await start_door(nursery, ring, 9, engine=Behaviour())
        acceptor = await start_door(nursery, ring, 1)
        b = await start_door(nursery, ring, 2)
        c = await start_door(nursery, ring, 3)
        for d in (acceptor, b, c):
            link(d, server)
        # The acceptor takes the job but never runs it (its workers are not started), then dies.
        acc_jobs = Jobs(
            JobStore(tmp_path / "a.sqlite"),
            acceptor.front,
            MemoryJobDht(shared, acceptor.view.node, dead),
            owner="a",
            node=acceptor.view.node,
            max_jobs=8,
        )
        acceptor.front.mount("/v1/jobs", acc_jobs)
        r = await client.post(
            f"{acceptor.api}/jobs",
            json={"model": MODEL, "prompt": "p q", "max_tokens": 2, "id": "orphan"},
        )
        assert r.status_code == 202
        if forged:
            job = job_from_doc(decode_record(shared["job:orphan"][acceptor.view.node][1]) or {})
            running = Job(**{**_fields(job), "state": JobState.RUNNING})
            shared["jobrun:orphan"] = {stranger: (0, encode_record(running, "x"), -1.0)}
        strangers = frozenset({stranger})
        for d in (b, c):
            await start_jobs(
                nursery, d, tmp_path, MemoryJobDht(shared, d.view.node, dead, strangers)
            )
        await trio.sleep(0.3)
        assert (
            server.behaviour is not None and server.behaviour.served == []
        )  # acceptor alive: nobody takes over
        dead.add(acceptor.view.node)
        doc = await wait_done(client, c.api, "orphan")
        assert doc["status"] == "done" and doc["result"]["choices"][0]["text"] == " w2 w3"
        await trio.sleep(0.3)
        assert len(server.behaviour.served) == 1  # one taker ran it, once
        nursery.cancel_scope.cancel()


def test_finished_jobs_are_deleted_after_their_retention(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "j.sqlite")
    for jid, state in (
        ("done", JobState.DONE),
        ("failed", JobState.FAILED),
        ("waiting", JobState.QUEUED),
    ):
        store.add(
            Job(
                id=jid,
                model=MODEL,
                chat=False,
                body={"model": MODEL, "prompt": "x"},
                priority=Priority.MEDIUM,
                state=state,
                created=time.time() - 3 * 86400,
            )
        )
    gone = store.prune(time.time() - 86400)  # finished and older than a day
    assert sorted(j.id for j in gone) == ["done", "failed"]
    assert store.get("waiting") is not None and store.counts() == {"queued": 1}


def test_the_run_goes_to_the_claim_seen_first_not_the_one_dated_first() -> None:
    early, late, low = b"e" * 20, b"z" * 20, b"a" * 20
    back_dated = (late, {"_seq": 0, "_seen": 100.0})
    honest = (early, {"_seq": 50, "_seen": 10.0})
    assert first_claimant([back_dated, honest]) == early
    assert first_claimant([honest, back_dated]) == early
    # seen within the tolerance of each other: a race, the lower node id wins for everyone
    assert first_claimant([honest, (low, {"_seq": 99, "_seen": 11.0})]) == low
    assert first_claimant([(late, {"_seq": 1})]) == late  # nobody said when: still a claim
    assert first_claimant([]) is None


# -- owners (issue 31): a job is its submitter's --------------------------------


async def test_a_job_belongs_to_the_credential_that_submitted_it(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    other = {"authorization": "Bearer someone-else"}
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, ring, 1, engine=Behaviour())
        await start_jobs(nursery, a, tmp_path)
        body = {"model": MODEL, "prompt": "a b", "max_tokens": 2, "id": "mine"}
        r = await client.post(f"{a.api}/jobs", json=body, headers=OWNER)
        assert r.status_code == 202 and "secret" not in r.json()
        client.headers.update(OWNER)
        assert (await wait_done(client, a.api, "mine"))["status"] == "done"
        for headers in (other, {"authorization": ""}):  # another owner, or none: as if absent
            r = await client.get(f"{a.api}/jobs/mine", headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        r = await client.post(f"{a.api}/jobs", json=body, headers=other)  # its id, not its job
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_id_taken"
        again = await client.post(f"{a.api}/jobs", json=body, headers=OWNER)
        assert again.status_code == 200 and again.json()["status"] == "done"  # a retry
        listed = (await client.get(f"{a.api}/jobs", headers=OWNER)).json()["data"]
        assert [j["id"] for j in listed] == ["mine"]
        assert (await client.get(f"{a.api}/jobs", headers=other)).json()["data"] == []
        r = await client.get(f"{a.api}/jobs", headers={"authorization": ""})
        assert r.status_code == 401
        # No credential at all (an open API): a secret, returned once, is the owner's
        del client.headers["authorization"]
        r = await client.post(f"{a.api}/jobs", json={**body, "id": "anon"})
        secret = r.json()["secret"]
        assert r.status_code == 202 and len(secret) >= 32
        client.headers["authorization"] = f"Bearer {secret}"
        assert (await wait_done(client, a.api, "anon"))["status"] == "done"
        assert "secret" not in (await client.get(f"{a.api}/jobs/anon")).json()
        nursery.cancel_scope.cancel()


async def test_only_its_owner_cancels_a_queued_job_and_only_while_queued(
    tmp_path: Path,
) -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, ring, 1, engine=Behaviour())
        store = JobStore(tmp_path / "q.sqlite")
        jobs = Jobs(store, a.front, None, owner="x", node=a.view.node, max_jobs=4)
        a.front.mount("/v1/jobs", jobs)  # not running: jobs stay queued
        body = {"model": MODEL, "prompt": "x", "id": "q1"}
        assert (await client.post(f"{a.api}/jobs", json=body, headers=OWNER)).status_code == 202
        r = await client.post(
            f"{a.api}/jobs/q1/cancel", headers={"authorization": "Bearer someone-else"}
        )
        assert r.status_code == 404
        r = await client.post(f"{a.api}/jobs/q1/cancel", headers=OWNER)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert store.queued() == [] and not store.start("q1")  # it will not run
        store.add(
            Job(
                id="r1",
                model=MODEL,
                chat=False,
                body={"model": MODEL, "prompt": "x"},
                priority=Priority.MEDIUM,
                state=JobState.RUNNING,
                client=owner_tag("r1", a.view.node, "owner-1"),
                acceptor=a.view.node.hex(),
            )
        )
        r = await client.post(f"{a.api}/jobs/r1/cancel", headers=OWNER)
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_queued"
        nursery.cancel_scope.cancel()


async def test_a_members_forged_records_are_not_believed(tmp_path: Path) -> None:
    """A member (a live key that joined) wrote a ``job:`` record and a
    ``jobrun:`` entry saying "done" with its own answer: while the acceptor
    lives, only the acceptor's record counts; a second ``job:`` publisher
    never does, even one seen within the race window with the lowest id
    (the owner's tag, copied, is bound to the acceptor)."""
    ring = KeyRing.generate()
    shared: dict[str, dict[bytes, tuple[int, bytes, float]]] = {}
    liar = b"\x00" * 20
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers=OWNER) as client,
    ):
        a = await start_door(nursery, ring, 1)  # accepts; its workers never run
        b = await start_door(nursery, ring, 2)
        server = await start_door(nursery, ring, 9, engine=Behaviour())
        link(a, server)
        link(b, server)
        acc = Jobs(
            JobStore(tmp_path / "a.sqlite"),
            a.front,
            MemoryJobDht(shared, a.view.node, set()),
            owner="a",
            node=a.view.node,
            max_jobs=4,
        )
        a.front.mount("/v1/jobs", acc)
        body = {"model": MODEL, "prompt": "p", "id": "target"}
        assert (await client.post(f"{a.api}/jobs", json=body)).status_code == 202
        job = job_from_doc(decode_record(shared["job:target"][a.view.node][1]) or {})
        fake = Job(**{**_fields(job), "state": JobState.DONE, "result": {"forged": True}})
        shared["jobrun:target"] = {liar: (0, encode_record(fake, "x"), -1.0)}
        within_the_race = shared["job:target"][a.view.node][2] + 1.5
        shared["job:target"][liar] = (0, encode_record(fake, "x"), within_the_race)
        await start_jobs(nursery, b, tmp_path, MemoryJobDht(shared, b.view.node, set()))
        for door in (a, b):
            doc = (await client.get(f"{door.api}/jobs/target")).json()
            assert doc["status"] == "queued" and "result" not in doc, doc
        nursery.cancel_scope.cancel()


# -- full-size payloads (issue 32): blobs held by three, read anywhere ----------


async def test_a_full_size_job_survives_its_acceptors_and_its_runners_death(
    tmp_path: Path,
) -> None:
    """A ~100 KB request and a ~20 KB result: the acceptor dies before running
    it, a taker reads the request from the blob's holders and runs it, the
    result goes to two more members before the job is done, and after the
    taker dies too a fifth agent collects the whole answer."""
    ring = KeyRing.generate()
    shared: dict[str, dict[bytes, tuple[int, bytes, float]]] = {}
    dead: set[bytes] = set()
    prompt = "p " * 50_000
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers=OWNER) as client,
    ):
        server = await start_door(nursery, ring, 9, engine=Behaviour())
        doors = [await start_door(nursery, ring, i) for i in range(1, 6)]
        for d in doors:
            link(d, server)
        blobs = attach_blobs(doors, tmp_path, dead)
        acceptor, takers, reader = doors[0], doors[1:4], doors[4]
        node = acceptor.view.node
        acc_jobs = Jobs(  # takes the job, never runs it (no workers), then dies
            JobStore(tmp_path / "a.sqlite"),
            acceptor.front,
            MemoryJobDht(shared, node, dead),
            owner="a",
            node=node,
            max_jobs=8,
            blobs=blobs[node],
        )
        acceptor.front.mount("/v1/jobs", acc_jobs)
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 3000, "id": "big"}
        r = await client.post(f"{acceptor.api}/jobs", json=body)
        assert r.status_code == 202, r.text
        record = shared["job:big"][node][1]
        assert len(record) < MAX_VALUE // 2  # the prompt is not in it: its ref is
        ref = job_from_doc(decode_record(record) or {}).body_ref
        assert ref is not None and len(ref.holders) == 3
        dead.add(node)
        for d in takers:
            dht = MemoryJobDht(shared, d.view.node, dead)
            await start_jobs(nursery, d, tmp_path, dht, blobs=blobs[d.view.node])
        await start_jobs(
            nursery,
            reader,
            tmp_path,
            MemoryJobDht(shared, reader.view.node, dead),
            blobs=blobs[reader.view.node],
        )
        doc = await wait_done(client, reader.api, "big")
        assert doc["status"] == "done", doc
        text = doc["result"]["choices"][0]["text"]
        assert text.startswith(" w50000 w50001") and len(text) > 20_000
        assert server.behaviour is not None and server.behaviour.served[0]["prompt"] == prompt
        runner = bytes.fromhex(next(p.hex() for p in shared["jobrun:big"]))
        result_ref = job_from_doc(decode_record(shared["jobrun:big"][runner][1]) or {}).result_ref
        assert result_ref is not None and len(result_ref.holders) == 3
        dead.add(runner)  # the taker that ran it dies: the other holders have it
        assert runner in result_ref.holders
        assert (await wait_done(client, reader.api, "big"))["result"]["choices"][0]["text"] == text
        nursery.cancel_scope.cancel()


async def test_payload_size_and_deletion(tmp_path: Path) -> None:
    """Over the body limit is 413; an owner deletes a finished job with its
    blobs and record (a tombstone), after which it is a 404 everywhere; a
    malformed ref in anyone's record fails the read, not the agent."""
    ring = KeyRing.generate()
    shared: dict[str, dict[bytes, tuple[int, bytes, float]]] = {}
    dead: set[bytes] = set()
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers=OWNER) as client,
    ):
        server = await start_door(nursery, ring, 9, engine=Behaviour())
        doors = [await start_door(nursery, ring, i) for i in range(1, 5)]
        for d in doors:
            link(d, server)
        blobs = attach_blobs(doors, tmp_path, dead)
        jobs = {}
        for d in doors:
            dht = MemoryJobDht(shared, d.view.node, dead)
            jobs[d.view.node] = await start_jobs(
                nursery, d, tmp_path, dht, blobs=blobs[d.view.node]
            )
        a, other = doors[0], doors[3]
        huge = {"model": MODEL, "prompt": "x" * (1024 * 1024)}
        assert (await client.post(f"{a.api}/jobs", json=huge)).status_code == 413
        body = {"model": MODEL, "prompt": "q " * 5000, "max_tokens": 2000, "id": "gone"}
        assert (await client.post(f"{a.api}/jobs", json=body)).status_code == 202
        await wait_done(client, other.api, "gone")
        local = jobs[a.view.node].store.get("gone")
        assert local is not None and local.body_ref and local.result_ref
        held = [n for n in blobs if blobs[n].disk.held()]
        assert len(held) >= 3
        r = await client.delete(f"{other.api}/jobs/gone")  # not accepted there
        assert r.status_code == 404
        r = await client.delete(f"{a.api}/jobs/gone")
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert all(not b.disk.held() for b in blobs.values())
        assert (await client.get(f"{other.api}/jobs/gone")).status_code == 404
        assert "job:gone" in jobs[a.view.node].dht.withdrawn  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_a_record_naming_another_job_than_its_key_is_not_taken_over(
    tmp_path: Path,
) -> None:
    """A member stores ``job:junk`` whose record says it is the victim's job
    (from a key then held dead): nobody runs it, and the victim's row stays."""
    ring = KeyRing.generate()
    shared: dict[str, dict[bytes, tuple[int, bytes, float]]] = {}
    liar = b"l" * 20
    dead = {liar}
    async with trio.open_nursery() as nursery:
        server = await start_door(nursery, ring, 9, engine=Behaviour())
        b = await start_door(nursery, ring, 2)
        link(b, server)
        jobs = await start_jobs(nursery, b, tmp_path, MemoryJobDht(shared, b.view.node, dead))
        forged = Job(
            id="victim",
            model=MODEL,
            chat=False,
            body={"model": MODEL, "prompt": "attacker's", "max_tokens": 1},
            priority=Priority.MEDIUM,
            state=JobState.QUEUED,
        )
        shared["job:junk"] = {liar: (1, encode_record(forged, "x"), 0.0)}
        await trio.sleep(0.4)  # several takeover rounds (TAKEOVER_INTERVAL is 0.05 here)
        assert server.behaviour is not None and server.behaviour.served == []
        assert jobs.store.get("victim") is None and "jobrun:junk" not in shared
        nursery.cancel_scope.cancel()


async def test_a_job_asks_no_higher_than_the_policy_lets_clients(tmp_path: Path) -> None:
    from hexamesh.serve.priority import PriorityPolicy

    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(headers=OWNER) as client:
        a = await start_door(nursery, ring, 1, engine=Behaviour())
        jobs = Jobs(
            JobStore(tmp_path / "j.sqlite"),
            a.front,
            None,
            owner="a",
            node=a.view.node,
            max_jobs=4,
            priorities=PriorityPolicy(client_max=Priority.LOW),
        )
        a.front.mount("/v1/jobs", jobs)
        body = {"model": MODEL, "prompt": "x", "priority": "high", "id": "capped"}
        r = await client.post(f"{a.api}/jobs", json=body)
        assert r.status_code == 202 and r.json()["priority"] == "low"
        nursery.cancel_scope.cancel()


async def test_a_record_only_this_node_took_is_not_replicated() -> None:
    class Lonely(MemoryJobDht):
        async def put(self, key: str, value: bytes, ttl: float) -> int:
            return 1  # only our own store took it

    lonely = Lonely({}, b"n" * 20, set())
    assert not await jobs_mod.replicate(lonely, "job:x", b"v")
    lonely.alone = lambda: True  # type: ignore[method-assign]
    assert await jobs_mod.replicate(lonely, "job:x", b"v")  # a swarm of one: all there is
