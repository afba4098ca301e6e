"""The OpenAI Batch API over durable jobs: the official client uploads,
creates, retrieves, cancels and reads files; a batch whose runner dies is
resumed by another member; bad input fails the batch, not the agent."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from hexamesh.serve import batches as batches_mod
from hexamesh.serve import jobs as jobs_mod
from hexamesh.serve.batches import Batches, BatchStore, parse_lines
from hexamesh.wire import KeyRing
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, Door, attach_blobs, link, start_door
from tests.serve.test_jobs import MemoryJobDht, start_jobs


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_mod, "RETRY_DELAY", 0.01)
    monkeypatch.setattr(batches_mod, "TAKEOVER_INTERVAL", 0.05)
    monkeypatch.setattr(batches_mod, "POLL_INTERVAL", 0.02)


def _lines(n: int, endpoint: str = "/v1/chat/completions") -> bytes:
    rows = []
    for i in range(n):
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 2}
        if endpoint.endswith("chat/completions"):
            body["messages"] = [{"role": "user", "content": "w " * i}]
        else:
            body["prompt"] = "w " * i
        rows.append({"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


async def _swarm(
    nursery: trio.Nursery, tmp: Path, n: int, dead: set[bytes], *, run: bool = True
) -> tuple[Behaviour, list[Door], dict[bytes, Batches]]:
    ring = KeyRing.generate()
    shared: dict[str, dict[bytes, tuple[int, bytes, float]]] = {}
    server = await start_door(nursery, ring, 9, engine=Behaviour())
    doors = [await start_door(nursery, ring, i, api_keys=("k1", "k2")) for i in range(1, n + 1)]
    for d in doors:
        link(d, server)
    blobs = attach_blobs(doors, tmp, dead)
    out = {}
    for d in doors:
        dht = MemoryJobDht(shared, d.view.node, dead)
        jobs = await start_jobs(nursery, d, tmp, dht, blobs=blobs[d.view.node])
        b = Batches(BatchStore(tmp / f"batches-{d.view.node.hex()[:6]}.sqlite"), jobs, retention=60)
        d.front.mount("/v1/files", b)
        d.front.mount("/v1/batches", b)
        if run:
            await nursery.start(b.run)
        out[d.view.node] = b
    assert server.behaviour is not None
    return server.behaviour, doors, out


async def test_the_official_client_runs_a_batch(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        engine, doors, _ = await _swarm(nursery, tmp_path, 4, set())
        a, b = doors[0], doors[3]

        def use_client() -> dict[str, Any]:
            client = openai.OpenAI(base_url=a.api, api_key="k1", max_retries=0, timeout=10)
            other = openai.OpenAI(base_url=b.api, api_key="k1", max_retries=0, timeout=10)
            stranger = openai.OpenAI(base_url=a.api, api_key="k2", max_retries=0, timeout=10)
            f = client.files.create(file=("in.jsonl", io.BytesIO(_lines(5))), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            out: dict[str, Any] = {"created": batch.status, "file": (f.bytes, f.purpose)}
            try:
                stranger.batches.retrieve(batch.id)
            except openai.NotFoundError:
                out["stranger"] = 404
            import time

            deadline = time.monotonic() + 20
            while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
                time.sleep(0.05)
                batch = other.batches.retrieve(batch.id)  # any agent answers
            out["status"] = batch.status
            out["counts"] = batch.request_counts.model_dump() if batch.request_counts else None
            assert batch.output_file_id is not None
            text = other.files.content(batch.output_file_id).text
            out["lines"] = [json.loads(t) for t in text.splitlines()]
            out["listed"] = [x.id for x in client.batches.list()]
            out["stranger_listed"] = [x.id for x in stranger.batches.list()]
            out["batch_id"] = batch.id
            return out

        out = await trio.to_thread.run_sync(use_client)
        assert out["created"] == "validating" and out["file"][1] == "batch"
        assert out["stranger"] == 404 and out["stranger_listed"] == []
        assert out["status"] == "completed"
        assert out["counts"] == {"total": 5, "completed": 5, "failed": 0}
        assert out["listed"] == [out["batch_id"]]
        lines = out["lines"]
        assert [x["custom_id"] for x in lines] == [f"req-{i}" for i in range(5)]
        for i, line in enumerate(lines):
            body = line["response"]["body"]
            assert line["response"]["status_code"] == 200
            assert body["choices"][0]["message"]["content"] == f" w{i} w{i + 1}"
        assert len(engine.served) == 5  # each line ran once
        nursery.cancel_scope.cancel()


async def test_bad_lines_fail_the_batch_and_bad_requests_go_to_the_error_file(
    tmp_path: Path,
) -> None:
    lines, errors = parse_lines(b'{"custom_id": "a"}\nnot json\n', "/v1/completions")
    assert lines == [] and [e["line"] for e in errors] == [1, 2]
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers={"authorization": "Bearer k1"}) as client,
    ):
        _, doors, _ = await _swarm(nursery, tmp_path, 3, set())
        api = doors[0].api
        bad = b'{"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}\n'
        fid = await client.post(f"{api}/files", files={"file": bad}, data={"purpose": "batch"})
        fid.raise_for_status()
        r = await client.post(
            f"{api}/batches",
            json={"input_file_id": fid.json()["id"], "endpoint": "/v1/completions"},
        )
        bid = r.json()["id"]
        with trio.fail_after(10):
            while (doc := (await client.get(f"{api}/batches/{bid}")).json())["status"] != "failed":
                await trio.sleep(0.02)
        assert doc["errors"]["data"][0]["code"] == "invalid_request"
        # valid lines, one for a model nobody serves: the batch completes, that line errs
        good = (
            _lines(2, "/v1/completions")
            + json.dumps(
                {
                    "custom_id": "nope",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"model": "missing", "prompt": "x"},
                }
            ).encode()
        )
        r = await client.post(f"{api}/files", files={"file": good}, data={"purpose": "batch"})
        r = await client.post(
            f"{api}/batches", json={"input_file_id": r.json()["id"], "endpoint": "/v1/completions"}
        )
        bid = r.json()["id"]
        with trio.fail_after(10):
            while (doc := (await client.get(f"{api}/batches/{bid}")).json())["status"] not in (
                "completed",
                "failed",
            ):
                await trio.sleep(0.02)
        assert doc["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        err = (await client.get(f"{api}/files/{doc['error_file_id']}/content")).text
        row = json.loads(err)
        assert row["custom_id"] == "nope" and row["response"]["status_code"] == 404
        assert (await client.post(f"{api}/files", data={"purpose": "x"})).status_code == 400
        r = await client.post(f"{api}/batches", json={"input_file_id": "file-" + "0" * 32})
        assert r.status_code == 400  # no endpoint
        nursery.cancel_scope.cancel()


async def test_a_batch_whose_runner_dies_is_resumed_and_a_cancel_keeps_what_was_done(
    tmp_path: Path,
) -> None:
    dead: set[bytes] = set()
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers={"authorization": "Bearer k1"}) as client,
    ):
        engine, doors, batches = await _swarm(nursery, tmp_path, 4, dead, run=False)
        runner, reader = doors[0], doors[3]
        api = runner.api
        r = await client.post(f"{api}/files", files={"file": _lines(4)}, data={"purpose": "batch"})
        r = await client.post(
            f"{api}/batches",
            json={"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions"},
        )
        bid = r.json()["id"]
        dead.add(runner.view.node)  # created, never run: its runner dies
        for d in doors[1:]:
            await nursery.start(batches[d.view.node].run)
        with trio.fail_after(20):
            while True:
                doc = (await client.get(f"{reader.api}/batches/{bid}")).json()
                if doc["status"] == "completed":
                    break
                await trio.sleep(0.05)
        assert doc["request_counts"]["completed"] == 4 and len(engine.served) == 4
        out = (await client.get(f"{reader.api}/files/{doc['output_file_id']}/content")).text
        assert len(out.splitlines()) == 4
        # a cancel at its runner: nothing more is submitted, what was done is kept
        taker = next(
            d for d in doors[1:] if batches[d.view.node].store.get("batch", bid) is not None
        )
        engine.token_delay = 0.05
        r = await client.post(
            f"{taker.api}/files", files={"file": _lines(40)}, data={"purpose": "batch"}
        )
        r = await client.post(
            f"{taker.api}/batches",
            json={"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions"},
        )
        second = r.json()["id"]
        with trio.fail_after(10):
            while (await client.get(f"{taker.api}/batches/{second}")).json()[
                "status"
            ] == "validating":
                await trio.sleep(0.02)
        r = await client.post(f"{taker.api}/batches/{second}/cancel")
        assert r.json()["status"] == "cancelling"
        with trio.fail_after(20):
            while (doc := (await client.get(f"{taker.api}/batches/{second}")).json())[
                "status"
            ] != "cancelled":
                await trio.sleep(0.05)
        counts = doc["request_counts"]
        assert counts["total"] == 40 and counts["completed"] < 40
        assert len(engine.served) - 4 < 40  # cancelled lines never ran
        nursery.cancel_scope.cancel()


async def test_batches_are_bounded_and_forged_records_are_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches_mod, "MAX_RUNNING_PER_CLIENT", 2)
    lines, errors = parse_lines(b"[" * 100_000 + b"\n", "/v1/completions")
    assert lines == [] and errors[0]["code"] == "invalid_json_line"  # not a RecursionError
    dead: set[bytes] = set()
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(timeout=10, headers={"authorization": "Bearer k1"}) as client,
    ):
        engine, doors, batches = await _swarm(nursery, tmp_path, 3, dead, run=False)
        api = doors[0].api
        parts = {f"f{i}": "x" for i in range(9)}
        r = await client.post(
            f"{api}/files", files={"file": _lines(1)}, data={"purpose": "batch", **parts}
        )
        assert r.status_code == 400 and "parts" in r.text
        r = await client.post(f"{api}/files", files={"file": b" \n"}, data={"purpose": "batch"})
        assert r.status_code == 400 and "empty" in r.text
        r = await client.post(f"{api}/files", files={"file": _lines(2)}, data={"purpose": "batch"})
        fid = r.json()["id"]
        ask = {"input_file_id": fid, "endpoint": "/v1/chat/completions"}
        assert (await client.post(f"{api}/batches", json=ask)).status_code == 200
        assert (await client.post(f"{api}/batches", json=ask)).status_code == 200
        r = await client.post(f"{api}/batches", json=ask)
        assert r.status_code == 429 and r.json()["error"]["code"] == "batches_full"
        # a member copies a batch's record under another key, from a key held dead
        runner = batches[doors[0].view.node]
        victim = runner.store.all("batch")[0]
        liar = b"l" * 20
        dead.add(liar)
        forged = dict(victim) | {"status": "cancelling", "secret": "x"}
        taker = batches[doors[1].view.node]
        shared = taker.jobs.dht.store  # type: ignore[union-attr]
        shared["batch:batch_" + "0" * 32] = {liar: (1, batches_mod._encode(forged), 0.0)}
        await taker._take_over()
        assert taker.store.all("batch") == [] and engine.served == []
        nursery.cancel_scope.cancel()
