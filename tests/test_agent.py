"""The foundation agent in one trio process, on real loopback sockets."""

import json
from pathlib import Path

import trio

from hexamesh.agent import STATUS_FILE_NAME, AgentStatus, run_agent
from hexamesh.config import AgentConfig


async def test_founder_takes_the_centre_and_a_joiner_reaches_it(tmp_path: Path) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            founder_cfg = AgentConfig(data_dir=tmp_path / "a", host="127.0.0.1", port=0)
            founder: AgentStatus = await nursery.start(
                lambda task_status: run_agent(founder_cfg, task_status=task_status)
            )
            assert founder.founder and founder.cell == "0,0"
            joiner_cfg = AgentConfig(
                data_dir=tmp_path / "b",
                host="127.0.0.1",
                port=0,
                join=(founder.address,),
                swarm_key=tmp_path / "a" / "swarm.key",
            )
            joiner: AgentStatus = await nursery.start(
                lambda task_status: run_agent(joiner_cfg, task_status=task_status)
            )
            assert not joiner.founder and joiner.cell is None
            assert joiner.node_id != founder.node_id
            status_file = tmp_path / "b" / STATUS_FILE_NAME
            while json.loads(status_file.read_text())["seeds"][founder.address] is None:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert not status_file.exists()  # removed on a clean stop
