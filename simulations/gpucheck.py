"""GPU path check: what an agent does with this machine's GPU, measured.

    python -m simulations.gpucheck --json [--server-module M] [--timeout S]

Reads the GPU twice, hexamesh's way (``detect_device``) and with an
independent ``nvidia-smi`` query; checks that the fit check refuses a share
of the card that is not free; then runs one agent serving a model with
``--max-models 2`` and reports the ``--gpu-memory-utilization`` its server
was started with, the GPU memory it dances (fetched over UDP as ``hexamesh
peers`` does) against ``nvidia-smi``, and one completion through its OpenAI
API. ``--server-module`` is vLLM's OpenAI server by default, on the tiny
model made locally; ``tests.engine.fake_vllm`` (the tests' stand-in) checks
everything but vLLM on a GPU machine where vLLM cannot be installed. Exits 1
where there is no GPU. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from hexamesh.agent import AgentStatus, run_agent
from hexamesh.comb.render import view_json
from hexamesh.comb.service import fetch_view
from hexamesh.config import AgentConfig
from hexamesh.engine.device import detect_device
from hexamesh.engine.supervisor import EngineConfig, EngineError, ModelSpec, open_engine
from hexamesh.net.base import parse_addr
from hexamesh.swarmkey import SWARM_KEY_FILE_NAME, load_key_file
from simulations.common import emit

MIB = 2**20
NAME = "gpucheck-tiny"  # served model name: also how its server is found in /proc


def nvidia_smi() -> dict[str, Any]:
    """An independent reading: name, total, free and used (MiB)."""
    fields = ("name", "total", "free", "used")
    query = "--query-gpu=name,memory.total,memory.free,memory.used"
    text = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = [v.strip() for v in text.splitlines()[0].split(",")]
    return {k: v if k == "name" else int(v) for k, v in zip(fields, values, strict=False)}


def server_share() -> float | None:
    """``--gpu-memory-utilization`` of the running server of NAME, from /proc."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if NAME in args and "--gpu-memory-utilization" in args:
            return float(args[args.index("--gpu-memory-utilization") + 1])
    return None


async def own_dance(status: AgentStatus, data_dir: Path) -> dict[str, Any]:
    """The agent's cell in its own view, once it dances GPU memory."""
    ring = load_key_file(data_dir / SWARM_KEY_FILE_NAME)
    while True:
        view = view_json(await fetch_view(ring, parse_addr(status.address)))
        cells: list[dict[str, Any]] = view["cells"]  # type: ignore[assignment]
        mine = [c for c in cells if c["node"] == status.node_id]
        if mine and mine[0]["gpu_total"]:
            return mine[0]
        await trio.sleep(0.2)


async def check(server_module: str, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"server_module": server_module}
    smi = nvidia_smi()
    start = time.perf_counter()
    device = detect_device()
    out["detect_ms"] = round((time.perf_counter() - start) * 1000, 1)
    out["gpu"] = device.name
    out["detect_matches"] = (
        device.gpu and device.name == smi["name"] and device.gpu_total == smi["total"] * MIB
    )
    tmp = Path(tempfile.mkdtemp(prefix="gpucheck-"))
    model = tmp / "model"
    if server_module == EngineConfig().server_module:
        from hexamesh.engine.tiny import make_tiny_model

        make_tiny_model(model)
    else:
        model.mkdir()
    engine = EngineConfig(server_module=server_module, ready_timeout=timeout)
    async with open_engine(engine, device) as probe:
        try:
            probe.check_fits(ModelSpec(name="all", model=str(model), gpu_memory_utilization=0.999))
            out["too_big_refused"] = None
        except EngineError as e:
            out["too_big_refused"] = str(e)
    config = AgentConfig(
        data_dir=tmp / "agent",
        host="127.0.0.1",
        port=0,
        api_port=0,
        model=(f"{NAME}={model}",),
        max_models=2,
    )
    started = time.perf_counter()
    with trio.fail_after(timeout + 30):
        async with trio.open_nursery() as nursery:
            status: AgentStatus = await nursery.start(
                lambda task_status: run_agent(config, engine_config=engine, task_status=task_status)
            )
            mine = await own_dance(status, tmp / "agent")
            out["server_share"] = server_share()
            out["dance_gpu_total_mib"] = mine["gpu_total"] // MIB
            out["dance_gpu_used_mib"] = mine["gpu_used"] // MIB
            smi = nvidia_smi()
            out["smi_total_mib"], out["smi_free_mib"] = smi["total"], smi["free"]
            async with httpx.AsyncClient(timeout=timeout) as client:
                while NAME not in json.dumps(mine["models"]):
                    await trio.sleep(0.2)
                    mine = await own_dance(status, tmp / "agent")
                out["ready_s"] = round(time.perf_counter() - started, 1)
                reply = await client.post(
                    f"{status.api}/completions",
                    json={"model": NAME, "prompt": "hello", "max_tokens": 16},
                )
                out["completion_status"] = reply.status_code
                out["completion_tokens"] = reply.json().get("usage", {}).get("completion_tokens")
            nursery.cancel_scope.cancel()
    # a server took its share between the two readings: compare the total,
    # and the used part within what that server may hold
    out["dance_matches"] = out["dance_gpu_total_mib"] == out["smi_total_mib"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-module", default=EngineConfig().server_module)
    parser.add_argument("--timeout", type=float, default=300.0, help="s for the server to start")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args()
    if not detect_device().gpu:
        print("gpucheck: no NVIDIA GPU here (nvidia-smi)", file=sys.stderr)
        sys.exit(1)
    emit(trio.run(check, args.server_module, args.timeout), quiet=args.json)


if __name__ == "__main__":
    main()
