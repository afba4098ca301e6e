"""The supervisor with a stand-in server (tests/engine/fake_vllm.py): readiness,
restart after SIGKILL, no orphans, the fit check, a crash loop, typed errors."""

import os
import signal
from pathlib import Path

import pytest
import trio

from hexamesh.engine.device import Device, detect_device
from hexamesh.engine.supervisor import (
    EngineConfig,
    EngineError,
    EngineState,
    ModelSpec,
    open_engine,
    server_command,
    server_env,
)
from tests.engine.client import EngineClient, EngineRequestError, EngineUnavailable
from tests.engine.fake_gpu import FakeGpu

CPU = Device(gpu=False, name="cpu")


def config(**extra_env: str) -> EngineConfig:
    return EngineConfig(
        server_module="tests.engine.fake_vllm",
        ready_timeout=20.0,
        stop_grace=2.0,
        restart_delay=0.05,
        scrape_interval=0.1,
        extra_env=extra_env,
    )


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it holds nothing)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)


async def test_serves_restarts_after_sigkill_and_leaves_nothing_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    spec = ModelSpec(name="tiny", model=str(tmp_path), kv_cache_gb=0.01)
    async with open_engine(config(FAKE_VLLM_CHILD_PIDFILE=str(pidfile)), CPU) as engine:
        await engine.load(spec)
        assert engine.models() == {"tiny": EngineState.READY}
        async with EngineClient(engine.url("tiny")) as client:
            assert await client.models() == ["tiny"]
            out = await client.completion(model="tiny", prompt="hi", max_tokens=3)
            assert out["choices"][0]["text"] == "tok tok tok "
            chunks = [c async for c in client.stream_chat(model="tiny", messages=[], max_tokens=5)]
            assert len(chunks) == 5
            with pytest.raises(EngineRequestError) as bad:
                await client.completion(model="other", prompt="hi")
            assert bad.value.status == 404 and "does not exist" in bad.value.message
        await wait_until(lambda: engine.load_of("tiny").running == 1)
        assert engine.load_of("tiny").load == 0.25  # KV use dominates

        first_pid, first_child = engine.pid("tiny"), int(pidfile.read_text())
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: engine.pid("tiny") not in (None, first_pid))
        await wait_until(lambda: engine.models()["tiny"] is EngineState.READY)
        await wait_until(lambda: not alive(first_child))  # the old group went with it
        async with EngineClient(engine.url("tiny")) as client:
            assert (await client.completion(model="tiny", prompt="x", max_tokens=1))["choices"]
        second_pid, second_child = engine.pid("tiny"), int(pidfile.read_text())
        await engine.unload("tiny")
        assert engine.models() == {}
        assert second_pid is not None and not alive(second_pid) and not alive(second_child)


async def test_a_model_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    async with open_engine(config(), CPU) as engine:
        with pytest.raises(EngineError, match="GiB of RAM"):
            await engine.load(ModelSpec(name="huge", model=str(tmp_path), kv_cache_gb=1e6))
        assert engine.models() == {}


def test_on_a_gpu_vllm_is_given_its_share_and_no_cpu_settings() -> None:
    gpu = Device(gpu=True, name="NVIDIA H200", gpu_total=143771 * 2**20, gpu_free=143000 * 2**20)
    spec = ModelSpec(name="m", model="/models/m", gpu_memory_utilization=0.425)
    cmd = server_command(spec, 8001, gpu, EngineConfig())
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.425"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
    assert cmd[cmd.index("--dtype") + 1] == "auto"  # the model's own (bf16, fp16) on a GPU
    env = server_env(spec, gpu, EngineConfig())
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and env.get("VLLM_TARGET_DEVICE") != "cpu"
    cpu_cmd = server_command(spec, 8001, CPU, EngineConfig())
    assert "--gpu-memory-utilization" not in cpu_cmd
    assert cpu_cmd[cpu_cmd.index("--dtype") + 1] == "float32"


async def test_on_a_gpu_a_model_is_refused_when_its_share_is_not_free(
    tmp_path: Path, fake_gpu: FakeGpu
) -> None:
    fake_gpu.reads(total_mib=100_000, free_mib=99_000)

    def half(name: str) -> ModelSpec:
        return ModelSpec(name=name, model=str(tmp_path), gpu_memory_utilization=0.45)

    async with open_engine(config(), detect_device()) as engine:
        await engine.load(half("first"))
        # what a real vLLM would leave: its 45,000 MiB taken. Each load reads afresh.
        fake_gpu.reads(total_mib=100_000, free_mib=40_000)
        with pytest.raises(EngineError, match=r"would take 43.9 GiB .*0.45 of 97.7.*39.1 GiB free"):
            await engine.load(half("second"))
        assert engine.models() == {"first": EngineState.READY}
        assert engine.device.gpu_free == 40_000 * 2**20
        fake_gpu.prints("NVIDIA-SMI has failed", rc=9)  # a failed reading keeps the last
        assert (await engine.refresh_device()).gpu_free == 40_000 * 2**20


async def test_on_a_gpu_weights_larger_than_the_share_are_refused(
    tmp_path: Path, fake_gpu: FakeGpu
) -> None:
    fake_gpu.reads(total_mib=10_000, free_mib=10_000)
    with (tmp_path / "model.safetensors").open("wb") as f:
        f.truncate(5 * 2**30)  # sparse: 5 GiB of weights on no disk
    big = ModelSpec(name="big", model=str(tmp_path), gpu_memory_utilization=0.5)
    async with open_engine(config(), detect_device()) as engine:
        with pytest.raises(EngineError, match=r"needs about 6.0 GiB .* its share is 4.9 GiB"):
            await engine.load(big)
        assert engine.models() == {}


async def test_a_crash_loop_ends_in_a_clear_failure(tmp_path: Path) -> None:
    async with open_engine(config(FAKE_VLLM_EXIT="3"), CPU) as engine:
        with pytest.raises(EngineError, match="exited 6 times") as failed:
            await engine.load(ModelSpec(name="bad", model=str(tmp_path), kv_cache_gb=0.01))
        assert "ValueError: crashing as told" in str(failed.value)  # vLLM's own reason
        assert engine.models() == {}


async def test_a_model_path_that_is_not_a_directory_is_refused_at_once(tmp_path: Path) -> None:
    async with open_engine(config(), CPU) as engine:
        start = trio.current_time()
        for missing in (str(tmp_path / "nope"), "./nope-either"):
            with pytest.raises(EngineError, match="no model directory at"):
                await engine.load(ModelSpec(name="typo", model=missing, kv_cache_gb=0.01))
        assert trio.current_time() - start < 1.0  # no vLLM started
        assert engine.models() == {}


async def test_an_unreachable_server_is_unavailable_not_a_traceback() -> None:
    async with EngineClient("http://127.0.0.1:9") as client:
        with pytest.raises(EngineUnavailable):
            await client.models()
