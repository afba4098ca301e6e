"""Job records are sealed under the swarm key, bound to their DHT key."""

from __future__ import annotations

from typing import Any

import msgpack
import trio

from hexamesh.serve.jobs import DhtJobs, Job, JobState, encode_record
from hexamesh.serve.jobseal import JobSeal
from hexamesh.serve.router import Priority
from hexamesh.wire import KeyRing

RING = KeyRing.generate()


def test_only_the_swarms_keys_open_a_record_and_only_under_its_own_key() -> None:
    sealed = JobSeal(RING).seal("job:a", b"prompt and answer")
    assert b"prompt" not in sealed
    assert JobSeal(RING).open("job:a", sealed) == b"prompt and answer"
    assert JobSeal(KeyRing.generate()).open("job:a", sealed) is None
    assert JobSeal(RING).open("job:b", sealed) is None  # moved under another job's key
    rotated = KeyRing(KeyRing.generate().primary, [RING.primary])
    assert JobSeal(rotated).open("job:a", sealed) == b"prompt and answer"
    assert JobSeal(RING).open("job:a", b"\x01short") is None


class _Record:
    def __init__(self, key: str, value: bytes) -> None:
        self.key, self.value, self.publisher_id, self.seq = key, value, b"p" * 20, 1


class _Dht:
    """The DHT service's face, holding what was put."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes, ttl: float) -> int:
        self.values[key] = value
        return 3

    async def claims(self, key: str) -> tuple[list[_Record], dict[bytes, float]]:
        records = [_Record(key, self.values[key])] if key in self.values else []
        return records, {r.publisher_id: 5.0 for r in records}

    def held(self, prefix: str) -> list[_Record]:
        return [_Record(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def test_what_the_dht_holds_is_sealed_and_reads_back() -> None:
    dht = _Dht()
    jobs = DhtJobs(dht, lambda node: False, lambda node: True, JobSeal(RING))
    job = Job(
        id="j1",
        model="tiny",
        chat=False,
        body={"prompt": "a secret prompt"},
        priority=Priority.MEDIUM,
        state=JobState.QUEUED,
    )
    record = encode_record(job, "10.0.0.1:7946")

    async def main() -> list[tuple[bytes, dict[str, Any]]]:
        await jobs.put("job:j1", record, 60.0)
        return await jobs.get_records("job:j1")

    got = trio.run(main)
    assert b"secret" not in dht.values["job:j1"]
    assert got[0][1]["body"] == {"prompt": "a secret prompt"}
    assert got[0][1]["_seen"] == 5.0
    assert [k for k, _, _ in jobs.held_jobs()] == ["job:j1"]
    dht.values["job:j2"] = msgpack.packb({"id": "j2"})  # a plain (or forged) record: dropped
    assert [k for k, _, _ in jobs.held_jobs()] == ["job:j1"]
