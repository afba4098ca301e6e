"""The foundation agent in one trio process, on real loopback sockets."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from rich.console import Console

from hexamesh.agent import STATUS_FILE_NAME, AgentStatus, _StatusFile, resolve_keyring, run_agent
from hexamesh.agent.api import _refuse
from hexamesh.comb.render import peer_table, view_json
from hexamesh.comb.service import fetch_view
from hexamesh.config import AgentConfig
from hexamesh.engine.supervisor import EngineConfig
from hexamesh.faults import Component, Faults
from hexamesh.hexgrid import ORIGIN, Hex, distance
from hexamesh.net.base import parse_addr
from hexamesh.swarmkey import SWARM_KEY_FILE_NAME, JoinToken, create_key_file, load_key_file
from hexamesh.wire import KeyRing
from tests.engine.fake_gpu import FakeGpu


async def wait_for(path: Path, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if check(data):
                return data
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        await trio.sleep(0.05)


async def test_founder_takes_the_centre_and_a_joiner_links_next_to_it(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            founder_cfg = AgentConfig(data_dir=tmp_path / "a", host="127.0.0.1", port=0, api_port=0)
            founder: AgentStatus = await nursery.start(
                lambda task_status: run_agent(founder_cfg, task_status=task_status)
            )
            assert founder.founder
            await wait_for(tmp_path / "a" / STATUS_FILE_NAME, lambda d: d["cell"] == "0,0")
            joiner_cfg = AgentConfig(
                data_dir=tmp_path / "b",
                host="127.0.0.1",
                port=0,
                api_port=0,
                join=(founder.address,),
                swarm_key=tmp_path / "a" / "swarm.key",
            )
            joiner: AgentStatus = await nursery.start(
                lambda task_status: run_agent(joiner_cfg, task_status=task_status)
            )
            assert not joiner.founder and joiner.cell is None  # not placed before it joins
            assert joiner.node_id != founder.node_id
            status_file = tmp_path / "b" / STATUS_FILE_NAME
            state = await wait_for(
                status_file,
                lambda d: (
                    d["seeds"][founder.address] is not None and founder.node_id in d["neighbours"]
                ),
            )
            assert distance(Hex.parse(state["cell"]), ORIGIN) == 1
            await wait_for(
                tmp_path / "a" / STATUS_FILE_NAME, lambda d: joiner.node_id in d["neighbours"]
            )
            nursery.cancel_scope.cancel()
        assert not status_file.exists()  # removed on a clean stop


def test_the_status_file_skips_rewrites_for_rtt_wobble_alone(tmp_path: Path) -> None:
    path = tmp_path / STATUS_FILE_NAME
    status_file = _StatusFile(path, Faults())
    status = AgentStatus(
        node_id="ab", address="127.0.0.1:1", cell="0,0", pid=1, version="0", founder=True
    )
    status.seeds = {"127.0.0.1:2": None}
    status_file.write(status, now=0.0)

    def read() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    status.seeds = {"127.0.0.1:2": 1.5}  # the first RTT is news
    status_file.write(status, now=1.0)
    assert read()["seeds"] == {"127.0.0.1:2": 1.5}
    status.seeds = {"127.0.0.1:2": 1.7}  # wobble: held back
    status_file.write(status, now=2.0)
    assert read()["seeds"] == {"127.0.0.1:2": 1.5}
    status.neighbours = ["cd"]  # anything else: at once, with the new RTT
    status_file.write(status, now=3.0)
    assert read()["neighbours"] == ["cd"] and read()["seeds"] == {"127.0.0.1:2": 1.7}
    status.seeds = {"127.0.0.1:2": 1.9}
    status_file.write(status, now=12.0)  # wobble, but the last write is 9 s old
    assert read()["seeds"] == {"127.0.0.1:2": 1.7}
    status_file.write(status, now=13.5)
    assert read()["seeds"] == {"127.0.0.1:2": 1.9}
    path.unlink()  # removed under us: written again whatever changed
    status_file.write(status, now=14.0)
    assert path.exists()


def test_a_status_file_write_that_fails_is_counted_and_tried_again(tmp_path: Path) -> None:
    faults = Faults()
    path = tmp_path / "gone" / STATUS_FILE_NAME  # its directory is missing: the write fails
    status_file = _StatusFile(path, faults)
    status = AgentStatus(
        node_id="ab", address="127.0.0.1:1", cell=None, pid=1, version="0", founder=True
    )
    status_file.write(status, now=0.0)  # does not raise
    assert faults.counts[Component.STATUS] == 1 and not path.exists()
    path.parent.mkdir()
    status_file.write(status, now=1.0)  # the next tick: the same text, written this time
    assert json.loads(path.read_text())["node_id"] == "ab"


def test_a_token_key_is_kept_so_a_restart_without_it_stays_in_the_swarm(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    token = JoinToken("10.0.0.1", 7420, ring.primary).encode()
    got, seeds, founder = resolve_keyring(AgentConfig(data_dir=tmp_path, token=token))
    assert got.primary == ring.primary and seeds == ("10.0.0.1:7420",) and not founder
    saved = tmp_path / SWARM_KEY_FILE_NAME
    assert load_key_file(saved).primary == ring.primary  # mode 0600, or it would not load
    # restarted without the token (and the CLI, given only the data dir): the same swarm
    again, _, _ = resolve_keyring(AgentConfig(data_dir=tmp_path))
    assert again.primary == ring.primary


def test_a_token_never_overwrites_a_key_file(tmp_path: Path, caplog: Any) -> None:
    mine = create_key_file(tmp_path / SWARM_KEY_FILE_NAME)
    other = JoinToken("10.0.0.1", 7420, KeyRing.generate().primary)
    got, _, _ = resolve_keyring(AgentConfig(data_dir=tmp_path, token=other.encode()))
    assert got.primary == other.key  # this run uses the token's key ...
    assert load_key_file(tmp_path / SWARM_KEY_FILE_NAME).primary == mine.primary  # ... file kept
    assert "holds another swarm key" in caplog.text


async def test_on_a_gpu_the_dance_carries_its_memory_and_each_model_gets_a_share(
    tmp_path: Path, fake_gpu: FakeGpu
) -> None:
    """A model's vLLM takes its share of the GPU at start; the agent's dance then
    reports the GPU's memory as nvidia-smi reads it, and `hexamesh peers` shows it."""
    fake_gpu.reads(total_mib=143_771, free_mib=143_000)
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    argv = tmp_path / "argv"
    engine = EngineConfig(
        server_module="tests.engine.fake_vllm",
        ready_timeout=20.0,
        stop_grace=2.0,
        extra_env={"FAKE_VLLM_ARGV": str(argv)},
    )
    cfg = AgentConfig(
        data_dir=tmp_path / "a",
        host="127.0.0.1",
        port=0,
        api_port=0,
        model=(f"tiny={model_dir}",),
        max_models=2,
        gpu_share=0.6,  # agents sharing a GPU
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent: AgentStatus = await nursery.start(
                lambda task_status: run_agent(cfg, engine_config=engine, task_status=task_status)
            )
            await wait_for(
                tmp_path / "a" / STATUS_FILE_NAME,
                lambda d: d["models"].get("tiny", {}).get("state") == "ready",
            )
            args = argv.read_text().splitlines()
            assert args[args.index("--gpu-memory-utilization") + 1] == "0.3"  # 0.6 / 2
            ring = load_key_file(tmp_path / "a" / SWARM_KEY_FILE_NAME)
            while True:
                view = await fetch_view(ring, parse_addr(agent.address))
                cells: list[dict[str, Any]] = view_json(view)["cells"]  # type: ignore[assignment]
                (mine,) = [c for c in cells if c["node"] == agent.node_id]
                if mine["gpu_total"]:
                    break
                await trio.sleep(0.1)
            assert mine["gpu_total"] == 143_771 * 2**20
            assert mine["gpu_used"] == 771 * 2**20
            table = Console(width=200, record=True)
            table.print(peer_table(view))
            assert "0.8/140.4 GiB" in table.export_text()
            nursery.cancel_scope.cancel()


async def test_a_failed_service_is_restarted_and_shown_degraded_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that fails (here the front door's view of the swarm, once)
    does not end the agent: /health and agent.json say degraded until it is
    back, then ok, with the restart counted in the metrics."""
    from hexamesh.serve.view import CombView

    real_run = CombView.run
    failures = [RuntimeError("the view broke")]

    async def flaky_run(self: CombView, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if failures:
            task_status.started()
            await trio.sleep(0.5)
            raise failures.pop()
        await real_run(self, task_status=task_status)

    monkeypatch.setattr(CombView, "run", flaky_run)
    cfg = AgentConfig(data_dir=tmp_path / "a", host="127.0.0.1", port=0, api_port=0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent: AgentStatus = await nursery.start(
                lambda task_status: run_agent(cfg, task_status=task_status)
            )
            base = str(agent.api).removesuffix("/v1")
            async with httpx.AsyncClient(timeout=5) as client:
                while (await client.get(f"{base}/health")).json()["status"] != "degraded":
                    await trio.sleep(0.05)
                assert (await client.get(f"{base}/health")).json()["degraded"] == ["view"]
                state = await wait_for(
                    tmp_path / "a" / STATUS_FILE_NAME,
                    lambda d: d["health"] == "ok" and d["services"].get("view", {}).get("restarts"),
                )
                assert state["services"]["view"]["restarts"] == 1
                assert "the view broke" in state["services"]["view"]["last_error"]
                health = (await client.get(f"{base}/health")).json()
                assert health["status"] == "ok" and health["degraded"] == []
                metrics = (await client.get(f"{base}/metrics")).text
                assert 'hexamesh_service_restarts_total{service="view"} 1.0' in metrics
                assert 'hexamesh_errors_total{component="service"} 1.0' in metrics
            nursery.cancel_scope.cancel()


async def test_a_connection_over_the_api_s_bounds_is_told_503_before_it_is_closed() -> None:
    """The answer to a connection the API has no room for (it was a coroutine
    never awaited, so the client saw its connection closed with no answer)."""
    ours, theirs = trio.socket.socketpair()
    with ours, theirs:
        _refuse(trio.SocketStream(ours))
        with trio.fail_after(5):
            answer = await theirs.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503 ") and b'"code": "overloaded"' in answer
