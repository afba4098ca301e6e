"""`hexamesh submit`, `models` and `jobs submit|status|collect` against a front door."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from hexamesh.serve.batches import Batches, BatchStore
from hexamesh.serve.jobs import Jobs, JobStore
from hexamesh.wire import KeyRing
from tests.helpers import run_hexamesh
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, attach_blobs, link, start_door


async def test_cli_against_a_peer(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery:
        a = await start_door(nursery, ring, 1, api_keys=("k",))
        b = await start_door(nursery, ring, 2, engine=Behaviour())
        link(a, b)
        blobs = attach_blobs([a], tmp_path, set())[a.view.node]
        jobs = Jobs(
            JobStore(tmp_path / "j.sqlite"),
            a.front,
            None,
            owner="a",
            node=a.view.node,
            max_jobs=4,
            blobs=blobs,
        )
        a.front.mount("/v1/jobs", jobs)
        await nursery.start(jobs.run)
        batches = Batches(BatchStore(tmp_path / "b.sqlite"), jobs, retention=60)
        a.front.mount("/v1/files", batches)
        a.front.mount("/v1/batches", batches)
        await nursery.start(batches.run)

        async def cli(*args: str) -> tuple[int, str, str]:
            done = await trio.to_thread.run_sync(
                lambda: run_hexamesh(*args, "--peer", a.api, "--api-key", "k", timeout=60)
            )
            return done.returncode, done.stdout, done.stderr

        code, out, err = await cli("submit", "one two", "--max-tokens", "3")
        assert code == 0, err
        assert out == " w2 w3 w4\n" and f"served by {b.view.node.hex()[:12]}" in err
        code, out, _ = await cli("submit", "one two", "--max-tokens", "2", "--no-stream", "--chat")
        assert code == 0 and out == " w2 w3\n"
        code, out, _ = await cli("models")
        assert code == 0 and MODEL in out
        code, out, _ = await cli("jobs", "submit", "x y z", "--max-tokens", "2", "--id", "cli-1")
        assert code == 0 and out.strip() == "cli-1"
        code, out, _ = await cli("jobs", "collect", "cli-1", "--timeout", "20")
        assert code == 0 and out == " w3 w4\n"
        code, out, _ = await cli("jobs", "status", "cli-1")
        assert code == 0 and json.loads(out)["status"] == "done"
        code, _, err = await cli("submit", "x", "--model", "nope")
        assert code != 0 and "404" in err and "tiny" in err
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt": "a"}\n{"prompt": "a b c"}\n')
        code, out, err = await cli("jobs", "submit", "--file", str(prompts), "--max-tokens", "1")
        assert code == 0, err
        assert [json.loads(x) for x in out.splitlines()] == [
            {"custom_id": "line-1", "text": " w1"},
            {"custom_id": "line-2", "text": " w3"},
        ]
        assert "completed" in err
        nursery.cancel_scope.cancel()


async def test_cli_jobs_on_an_open_api_belong_to_the_users_client_secret(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery:
        a = await start_door(nursery, ring, 1, engine=Behaviour())
        jobs = Jobs(
            JobStore(tmp_path / "j.sqlite"), a.front, None, owner="a", node=a.view.node, max_jobs=4
        )
        a.front.mount("/v1/jobs", jobs)
        await nursery.start(jobs.run)

        async def cli(user: str, *args: str) -> tuple[int, str, str]:
            home = str(tmp_path / user)
            done = await trio.to_thread.run_sync(
                lambda: run_hexamesh(*args, "--peer", a.api, "--data-dir", home, timeout=60)
            )
            return done.returncode, done.stdout, done.stderr

        code, out, err = await cli("ann", "jobs", "submit", "x y", "--max-tokens", "1")
        assert code == 0, err
        jid = out.strip()
        code, out, _ = await cli("ann", "jobs", "collect", jid, "--timeout", "20")
        assert code == 0 and out == " w2\n"
        code, _, err = await cli("bob", "jobs", "status", jid)
        assert code != 0 and "404" in err  # another user's secret: not bob's job
        secret = tmp_path / "ann" / "client.secret"
        assert secret.stat().st_mode & 0o777 == 0o600
        nursery.cancel_scope.cancel()
