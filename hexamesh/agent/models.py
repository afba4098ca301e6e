"""The models an agent serves: loaded into its engine, danced with their load."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from hexamesh.agent.process import wall_clock
from hexamesh.agent.status import STATUS_INTERVAL, AgentStatus
from hexamesh.comb.service import Honeycomb
from hexamesh.config import AgentConfig
from hexamesh.engine.device import Device
from hexamesh.engine.supervisor import (
    Engine,
    EngineError,
    EngineState,
    ModelSpec,
)
from hexamesh.placement.service import Placements

log = logging.getLogger(__name__)

UPTIME_STEP = 60.0  # s; the dance's uptime is refreshed this often (placement votes weigh it)


# s between readings of the GPU's memory for the dance (an nvidia-smi run, ~20 ms
# of a thread): placement votes weigh free GPU memory, which changes when a
# server starts or stops, not from second to second
GPU_POLL = 10.0


def model_spec(text: str, config: AgentConfig) -> ModelSpec:
    """``--model`` value -> spec: ``NAME=DIR|ID`` or ``DIR|ID`` (named after its last part).

    On a GPU each model this agent may hold gets an equal part of ``gpu_share``:
    vLLM takes its whole share at start, so the first of two would leave no room."""
    name, sep, model = text.partition("=")
    if not sep:
        model, name = text, Path(text.rstrip("/")).name
    held = max(1, config.max_models, len(config.model))
    return ModelSpec(
        name=name,
        model=model,
        kv_cache_gb=float(config.kv_cache_gb),
        max_model_len=config.max_model_len,
        gpu_memory_utilization=round(config.gpu_share / held, 3),
        extra_args=config.engine_args,
    )


async def _serve_models(
    config: AgentConfig,
    honeycomb: Honeycomb,
    status: AgentStatus,
    engine: Engine,
    placements: Placements,
) -> None:
    """Load the configured models into the engine; dance them, their load, whether
    there is room for more (status "up" or "full") and our uptime."""
    started = wall_clock()
    gpu_read = -GPU_POLL
    specs = [model_spec(m, config) for m in config.model]
    for spec in specs:
        if spec.name in engine.models():
            continue  # this service was restarted: the engine holds it already
        status.models[spec.name] = {"state": "starting", "load": 0.0}
        try:
            await engine.load(spec)
        except EngineError as e:
            log.error("cannot serve %s: %s", spec.name, e)
            status.models[spec.name] = {"state": "failed", "error": str(e)}
    while True:
        states = engine.models()
        ready = tuple(n for n, st in states.items() if st is EngineState.READY)
        if ready != honeycomb.dance.models:
            await honeycomb.set_models({n: engine.spec(n).model for n in ready})
        loads = {n: engine.load_of(n) for n in states}
        for name, st in states.items():
            url = engine.url(name) if st is EngineState.READY else None
            status.models[name] = {"state": st.value, "load": loads[name].load, "url": url}
        dance = honeycomb.dance
        now: dict[str, object] = {"status": _room(placements.room())}
        if loads:
            worst = max(loads.values(), key=lambda x: x.load)
            now |= {
                "load": worst.load,
                "queue": sum(x.waiting for x in loads.values()),
                "kv": worst.kv,
                "tok_s": round(sum(x.tok_s for x in loads.values()), 1),
            }
        if wall_clock() - started - dance.uptime >= UPTIME_STEP:
            now["uptime"] = round(wall_clock() - started)
        if engine.device.gpu and wall_clock() - gpu_read >= GPU_POLL:
            gpu_read = wall_clock()
            now |= _gpu_memory(await engine.refresh_device())
        if any(getattr(dance, k) != v for k, v in now.items()):
            honeycomb.update_dance(**now)
        await trio.sleep(STATUS_INTERVAL)


def _gpu_memory(device: Device) -> dict[str, object]:
    """The dance's GPU fields; 0 (not judged on) where nvidia-smi cannot say."""
    total, free = device.gpu_total, device.gpu_free
    if total is None or free is None:
        return {"gpu_total": 0, "gpu_used": 0}
    return {"gpu_total": total, "gpu_used": max(0, total - free)}


def _held(engine: Engine) -> int:
    """Models the engine serves or is starting (a failed one holds no room)."""
    return sum(
        st not in (EngineState.FAILED, EngineState.STOPPED) for st in engine.models().values()
    )


def _room(free: int) -> str:
    """The dance's status: "up" while a placement vote may give us a model."""
    return "up" if free > 0 else "full"
