"""Local hygiene (issue 31): secrets off the command line, the data dir and the
jobs database its owner's only, the engine behind a key only the agent knows,
/metrics behind a key when one is configured."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest
import trio

from hexamesh.agent import STATUS_FILE_NAME, AgentStatus, run_agent
from hexamesh.config import AgentConfig, ConfigError, load_config
from hexamesh.engine.supervisor import EngineConfig
from hexamesh.serve.jobs import JobStore
from tests.helpers import run_hexamesh

FAKE_ENGINE = EngineConfig(
    server_module="tests.engine.fake_vllm", ready_timeout=20.0, stop_grace=2.0
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret(path: Path, text: str, file_mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(file_mode)
    return path


def test_secrets_come_from_files_only_their_owner_reads(tmp_path: Path) -> None:
    keys = secret(tmp_path / "keys", "# clients\nk1\n\nk2\n")
    admin = secret(tmp_path / "admin", "a1\n")
    token = secret(tmp_path / "token", "hxm1.abc\n")
    cfg = load_config(
        env={"HEXAMESH_API_KEYS": "k0"},
        overrides={"api_key_file": keys, "admin_key_file": admin, "token_file": token},
    )
    assert cfg.api_keys == ("k0", "k1", "k2") and cfg.admin_keys == ("a1",)
    assert cfg.token == "hxm1.abc"
    link = tmp_path / "link"
    link.symlink_to(keys)  # a link planted where a key file was expected: not followed
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(env={}, overrides={"api_key_file": link})
    keys.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_config(env={}, overrides={"api_key_file": keys})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(env={}, overrides={"token_file": tmp_path / "nope"})


def test_a_secret_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    """(The agent then stops: it would join a seed without a swarm key.)"""
    done = run_hexamesh(
        "agent",
        "--data-dir",
        str(tmp_path / "d"),
        "--api-key",
        "k",
        "--join",
        "127.0.0.1:9",
        "--swarm-key",
        str(tmp_path / "missing.key"),
        env={"COLUMNS": "300"},  # one log line, unwrapped
    )
    assert done.returncode == 2
    assert "--api-key on the command line is visible to every local user" in done.stderr
    assert "--api-key-file" in done.stderr


def test_the_data_dir_and_the_jobs_database_are_the_owners_only(tmp_path: Path) -> None:
    from hexamesh.agent import prepare_agent

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    agent = prepare_agent(AgentConfig(data_dir=data))
    try:
        assert mode(data) == 0o700
        assert mode(data / "node.key") == 0o600
    finally:
        assert agent.lock is not None
        agent.lock.release()
    jobs = data / "jobs.sqlite"
    jobs.touch(mode=0o644)
    jobs.chmod(0o644)  # a store of before: narrowed when opened
    store = JobStore(jobs)
    store.db.execute("CREATE TABLE t (x)")  # a write: the WAL exists now
    assert mode(jobs) == 0o600
    assert mode(data / "jobs.sqlite-wal") == 0o600
    new = JobStore(tmp_path / "fresh.sqlite")
    new.db.execute("CREATE TABLE t (x)")
    assert mode(tmp_path / "fresh.sqlite") == 0o600
    assert all(mode(p) == 0o600 for p in tmp_path.glob("fresh.sqlite*")), {
        p.name: oct(mode(p)) for p in tmp_path.glob("fresh.sqlite*")
    }


async def test_the_engine_takes_only_the_agents_key_and_metrics_take_theirs(
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    cfg = AgentConfig(
        data_dir=tmp_path / "a",
        host="127.0.0.1",
        port=0,
        api_port=0,
        model=(f"tiny={model_dir}",),
        metrics_keys=("m1",),
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent: AgentStatus = await nursery.start(
                lambda task_status: run_agent(
                    cfg, engine_config=FAKE_ENGINE, task_status=task_status
                )
            )
            status = tmp_path / "a" / STATUS_FILE_NAME
            while True:
                models = json.loads(status.read_text()).get("models", {})
                if models.get("tiny", {}).get("state") == "ready":
                    break
                await trio.sleep(0.1)
            engine = models["tiny"]["url"]
            root = str(agent.api).removesuffix("/v1")
            body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
            async with httpx.AsyncClient(timeout=10) as client:
                # a local user who found the engine's port
                for path in ("/v1/completions", "/invocations"):  # vLLM's own guard: /v1 only
                    r = await client.post(f"{engine}{path}", json=body)
                    assert r.status_code == 401, path
                r = await client.post(f"{agent.api}/completions", json=body)
                assert r.status_code == 200, r.text  # the agent holds the key
                r = await client.get(f"{root}/metrics")
                assert r.status_code == 401
                r = await client.get(
                    f"{root}/metrics",
                    headers={"authorization": "Bearer m1"},
                )
                assert r.status_code == 200 and "hexamesh_peers_alive" in r.text
            nursery.cancel_scope.cancel()
