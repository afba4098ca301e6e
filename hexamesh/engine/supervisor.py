"""vLLM servers as supervised subprocesses, one per loaded model (trio).

Theory of operation
-------------------
``Engine.load(spec)`` checks that the model fits (free GPU memory, or on CPU
the configured KV-cache space plus the weights within available RAM), picks a
free local port and starts ``python -m vllm.entrypoints.openai.api_server``
in its own process group (``start_new_session``), so stopping it takes every
worker it forked along. The server's output is forwarded line by line into the
agent's log with the model's name. ``load`` returns once ``/health`` answers
200, or raises ``EngineError`` after ``ready_timeout``.

A server that exits on its own is restarted after a backoff (1 s doubling to
``restart_max_delay``); after ``max_restarts`` crashes within
``restart_window`` the model is reported *failed* and left stopped. While a
server is ready, ``/metrics`` is scraped every ``scrape_interval`` into an
``EngineLoad``.

``unload(name)`` (and leaving the ``open_engine`` block) stops a server:
SIGTERM to its process group, SIGKILL after ``stop_grace``. No process is
left behind: the group is killed even if the leader already exited.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from hexamesh.engine.device import (
    GPU_SHARE,
    Device,
    detect_device,
    looks_like_path,
    model_bytes,
)
from hexamesh.engine.load import EngineLoad, parse_metrics

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineState",
    "ModelSpec",
    "open_engine",
    "server_command",
]

log = logging.getLogger(__name__)

GROUP_EXIT_WAIT = 5.0  # s to wait for a killed group to vanish (zombies never do)


LAST_LINES = 40  # of vLLM's output kept to say why it exited


class EngineError(Exception):
    """A model could not be loaded, does not fit, or is not loaded."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str  # the served model name clients ask for
    model: str  # a local directory or a hub id
    dtype: str = "auto"  # "float32" on CPU unless told otherwise
    max_model_len: int = 1024
    gpu_memory_utilization: float = GPU_SHARE  # of the GPU's total memory this server takes
    tensor_parallel_size: int = 1
    kv_cache_gb: float = 1.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    extra_args: tuple[str, ...] = ()  # passed to vLLM as they are
    hub: bool = True  # may download a hub id; off for a placement unless the operator allowed it


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    python: str = sys.executable  # the interpreter that has vllm installed
    server_module: str = "vllm.entrypoints.openai.api_server"  # run with ``python -m``
    host: str = "127.0.0.1"  # vLLM binds here only: the agent fronts it
    ready_timeout: float = 300.0  # s for a server to answer /health (CPU startup ~35-60 s)
    stop_grace: float = 10.0  # s between SIGTERM and SIGKILL
    restart_delay: float = 1.0  # s before the first restart; doubles after each crash
    restart_max_delay: float = 30.0  # s; the backoff's cap
    max_restarts: int = 5  # crashes within restart_window before the model is failed
    restart_window: float = 600.0  # s
    scrape_interval: float = 1.0  # s between /metrics scrapes
    ram_headroom: float = 1.5  # CPU: weights x this + KV space must fit in available RAM
    # CPU: vLLM's threads take every core; niced, they leave the agents' control
    # plane (probes, gossip, relays) its few milliseconds on time. Seen without it:
    # a peer's view dropping a busy server for a moment on a 2-core machine.
    cpu_nice: int = 5
    extra_env: dict[str, str] = field(default_factory=dict)
    priority_scheduling: bool = True  # --scheduling-policy priority (the [policy] switch)


class EngineState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(spec: ModelSpec, port: int, device: Device, config: EngineConfig) -> list[str]:
    dtype = spec.dtype
    if dtype == "auto" and not device.gpu:
        dtype = "float32"  # what the CPU backend runs reliably
    cmd = [
        config.python,
        "-m",
        config.server_module,
        "--model",
        spec.model,
        "--served-model-name",
        spec.name,
        "--host",
        config.host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(spec.max_model_len),
        # one log line per request, re-logged by the agent, costs more CPU than
        # relaying the request; failures and vLLM's 10 s stats still come through
        "--disable-uvicorn-access-log",
        # repeats of a prefix (a system prompt, earlier turns) skip its prefill;
        # the router sends them back here (serve.affinity)
        "--enable-prefix-caching",
    ]
    if config.priority_scheduling:
        # requests carry a priority (serve.priority): high overtakes queued
        # low ones, and low ones are preempted first when the engine is full
        cmd += ["--scheduling-policy", "priority"]
    if "VLLM_API_KEY" in config.extra_env:  # every path behind the key, not /v1 only
        cmd += ["--middleware", KEY_GUARD]
    if device.gpu:
        cmd += [
            "--gpu-memory-utilization",
            str(spec.gpu_memory_utilization),
            "--tensor-parallel-size",
            str(spec.tensor_parallel_size),
        ]
    return [*cmd, *spec.extra_args]


CPU_MAX_NUM_SEQS = 128  # vLLM's --max-num-seqs default for its API server on CPU
GPU_MAX_NUM_SEQS = 256  # ... and on a GPU


def max_num_seqs(spec: ModelSpec, device: Device) -> int:
    """The batch slots a model's server has: its ``--max-num-seqs``, else vLLM's default."""
    args = list(spec.extra_args)
    for i, arg in enumerate(args):
        value = None
        if arg.startswith("--max-num-seqs="):
            value = arg.split("=", 1)[1]
        elif arg == "--max-num-seqs" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return GPU_MAX_NUM_SEQS if device.gpu else CPU_MAX_NUM_SEQS


def server_env(spec: ModelSpec, device: Device, config: EngineConfig) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
    if os.path.isdir(spec.model) or not spec.hub:
        env["HF_HUB_OFFLINE"] = "1"  # a local model needs no hub (and may have none)
    if not device.gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(spec.kv_cache_gb)))
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env[NICE_ENV] = str(config.cpu_nice)
    env.update(config.extra_env)
    return env


NICE_ENV = "HEXAMESH_ENGINE_NICE"  # read by the guard before it starts the server
KEY_GUARD = "hexamesh.engine.keyguard.EngineKeyGuard"  # imported by vLLM (--middleware)


def _why_it_exited(lines: Iterable[str]) -> str | None:
    """The line of vLLM's last output that says why it stopped: its last
    exception (``SomeError: ...``), else its last line."""
    kept = [line.strip() for line in lines if line.strip()]
    for line in reversed(kept):
        head = line.split(":", 1)[0]
        if " " not in head and head.endswith(("Error", "Exception", "Exit")):
            return line[:300]
    return kept[-1][:300] if kept else None


class _Server:
    """One model's server: its process, state and load."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.port = 0
        self.state = EngineState.STARTING
        self.process: trio.Process | None = None
        self.pgid: int | None = None
        self.load = EngineLoad.idle()
        self.crashes: list[float] = []
        self.restarts = 0
        self.ready = trio.Event()
        self.failed_reason: str | None = None
        self.cancel = trio.CancelScope()
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Engine:
    """The loaded models of one agent. Make one with :func:`open_engine`."""

    def __init__(self, nursery: trio.Nursery, config: EngineConfig, device: Device) -> None:
        self._nursery = nursery
        self.config = config
        self.device = device
        self._servers: dict[str, _Server] = {}
        self._http = httpx.AsyncClient(timeout=5.0)

    # -- queries ----------------------------------------------------------

    def models(self) -> dict[str, EngineState]:
        return {name: s.state for name, s in self._servers.items()}

    def spec(self, name: str) -> ModelSpec:
        """What ``name`` was loaded from (a placement vote for another replica loads the same)."""
        server = self._servers.get(name)
        if server is None:
            raise EngineError(f"model {name!r} is not loaded")
        return server.spec

    def url(self, name: str) -> str:
        """Base URL of a ready model's server (``http://127.0.0.1:PORT``)."""
        server = self._servers.get(name)
        if server is None or server.state is not EngineState.READY:
            raise EngineError(f"model {name!r} is not ready")
        return server.url

    def slots(self, name: str) -> int:
        """Batch slots of ``name``'s server (``max_num_seqs``)."""
        return max_num_seqs(self.spec(name), self.device)

    def load_of(self, name: str) -> EngineLoad:
        server = self._servers.get(name)
        if server is None:
            raise EngineError(f"model {name!r} is not loaded")
        return server.load

    def pid(self, name: str) -> int | None:
        server = self._servers.get(name)
        return server.process.pid if server and server.process else None

    # -- load / unload ----------------------------------------------------

    def check_fits(self, spec: ModelSpec) -> None:
        """Raise EngineError unless ``spec`` fits what is free on this machine
        (and, written as a path, is a directory: else vLLM would fail on it
        ``max_restarts`` times over minutes before the model is failed)."""
        if looks_like_path(spec.model) and not Path(spec.model).is_dir():
            raise EngineError(f"{spec.name}: no model directory at {spec.model}")
        weights = model_bytes(spec.model)
        if self.device.gpu:
            self._check_fits_gpu(spec, weights)
            return
        kv_in_use = sum(s.spec.kv_cache_gb for s in self._servers.values()) * 2**30
        need = weights * self.config.ram_headroom + spec.kv_cache_gb * 2**30
        ram_free = self.device.ram_available() - kv_in_use
        if need > ram_free:
            raise EngineError(
                f"{spec.name} needs about {need / 2**30:.1f} GiB of RAM "
                f"({spec.kv_cache_gb:g} GiB KV cache + weights), "
                f"{max(0, ram_free) / 2**30:.1f} GiB free"
            )

    def _check_fits_gpu(self, spec: ModelSpec, weights: int) -> None:
        """vLLM takes ``gpu_memory_utilization`` of the GPU's total memory at start
        and refuses to start when less than that is free ("Free memory on device ...
        is less than desired GPU memory utilization"); its weights must fit in it."""
        total, free = self.device.gpu_total, self.device.gpu_free
        if total is None or free is None:
            return  # nvidia-smi could not say: vLLM's own check decides
        share = spec.gpu_memory_utilization * total
        if share > free:
            raise EngineError(
                f"{spec.name} would take {share / 2**30:.1f} GiB of GPU memory "
                f"({spec.gpu_memory_utilization:g} of {total / 2**30:.1f}), "
                f"{free / 2**30:.1f} GiB free"
            )
        need = weights * 1.2
        if need > share:
            raise EngineError(
                f"{spec.name} needs about {need / 2**30:.1f} GiB of GPU memory, "
                f"its share is {share / 2**30:.1f} GiB"
            )

    async def refresh_device(self) -> Device:
        """A fresh reading of the GPU's memory (the CPU needs none). A failed
        reading keeps the last one: the GPU did not go away."""
        if self.device.gpu:
            fresh = await trio.to_thread.run_sync(detect_device)
            if fresh.gpu:
                self.device = fresh
        return self.device

    async def load(self, spec: ModelSpec) -> None:
        """Start serving ``spec``; returns when ready, raises EngineError otherwise."""
        if spec.name in self._servers:
            raise EngineError(f"model {spec.name!r} is loaded already")
        await self.refresh_device()  # what the servers started since took
        self.check_fits(spec)
        server = _Server(spec)
        self._servers[spec.name] = server
        self._nursery.start_soon(self._supervise, server)
        with trio.move_on_after(self.config.ready_timeout):
            await server.ready.wait()
        if server.state is not EngineState.READY:
            reason = server.failed_reason or f"not ready after {self.config.ready_timeout:.0f} s"
            await self.unload(spec.name)
            raise EngineError(f"{spec.name}: {reason}")

    async def unload(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is None:
            raise EngineError(f"model {name!r} is not loaded")
        server.cancel.cancel()
        await self._stop(server)
        server.state = EngineState.STOPPED

    async def aclose(self) -> None:
        for name in list(self._servers):
            await self.unload(name)
        await self._http.aclose()

    # -- supervision ------------------------------------------------------

    async def _supervise(self, server: _Server) -> None:
        cfg = self.config
        delay = cfg.restart_delay
        with server.cancel:
            while True:
                server.port = _free_port(cfg.host)
                cmd = server_command(server.spec, server.port, self.device, cfg)
                # through the guard: a SIGKILLed agent leaves no server behind
                cmd = [sys.executable, "-m", "hexamesh.engine.guard", str(os.getpid()), *cmd]
                log.info("%s: starting vLLM on port %d", server.spec.name, server.port)
                process = await trio.lowlevel.open_process(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=server_env(server.spec, self.device, cfg),
                    start_new_session=True,  # its own process group: stop takes all of it
                )
                server.process, server.pgid = process, process.pid
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._forward_log, server, process)
                        nursery.start_soon(self._watch_health, server, nursery.cancel_scope)
                        await process.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        self._kill_group(server, signal.SIGKILL)
                code = process.returncode
                why = _why_it_exited(server.last_lines)
                server.last_lines.clear()
                now = time.monotonic()
                server.crashes = [t for t in server.crashes if now - t < cfg.restart_window]
                server.crashes.append(now)
                if len(server.crashes) > cfg.max_restarts:
                    server.state = EngineState.FAILED
                    server.failed_reason = (
                        f"vLLM exited {len(server.crashes)} times in {cfg.restart_window:.0f} s "
                        f"(last exit code {code}{': ' + why if why else ''})"
                    )
                    log.error("%s: %s; giving up", server.spec.name, server.failed_reason)
                    server.ready.set()
                    return
                server.state = EngineState.RESTARTING
                server.restarts += 1
                log.warning(
                    "%s: vLLM exited with %s%s; restarting in %.0f s",
                    server.spec.name,
                    code,
                    f" ({why})" if why else "",
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, cfg.restart_max_delay)

    async def _forward_log(self, server: _Server, process: trio.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                server.last_lines.append(text)
                log.info("[%s] %s", server.spec.name, text)

    async def _watch_health(self, server: _Server, scope: trio.CancelScope) -> None:
        """Wait for /health, then scrape /metrics every interval."""
        while True:
            try:
                r = await self._http.get(server.url + "/health")
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await trio.sleep(0.25)
        server.state = EngineState.READY
        server.ready.set()
        log.info("%s: ready at %s", server.spec.name, server.url)
        before: dict[str, float] | None = None
        last = trio.current_time()
        first = True
        while True:
            if not first:  # the first scrape at once: the baseline for the rates
                await trio.sleep(self.config.scrape_interval)
            first = False
            try:
                r = await self._http.get(server.url + "/metrics")
                samples = parse_metrics(r.text)
            except (httpx.HTTPError, ValueError) as e:
                log.debug("%s: metrics scrape failed: %s", server.spec.name, e)
                continue
            now = trio.current_time()
            slots = max_num_seqs(server.spec, self.device)
            server.load = EngineLoad.from_samples(samples, before, now - last, slots)
            before, last = samples, now

    async def _stop(self, server: _Server) -> None:
        process = server.process
        if process is None:
            return
        self._kill_group(server, signal.SIGTERM)
        with trio.move_on_after(self.config.stop_grace):
            await process.wait()
        self._kill_group(server, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()
            # SIGKILL is asynchronous: give the rest of the group (vLLM's engine
            # core) a moment to be gone before saying it is stopped.
            with trio.move_on_after(GROUP_EXIT_WAIT):
                while self._group_exists(server):
                    await trio.sleep(0.05)

    @staticmethod
    def _group_exists(server: _Server) -> bool:
        if server.pgid is None:
            return False
        try:
            os.killpg(server.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    @staticmethod
    def _kill_group(server: _Server, sig: signal.Signals) -> None:
        if server.pgid is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(server.pgid, sig)


@asynccontextmanager
async def open_engine(
    config: EngineConfig | None = None, device: Device | None = None
) -> AsyncIterator[Engine]:
    """An engine for the block's duration; every server is stopped on the way out."""
    async with trio.open_nursery() as nursery:
        engine = Engine(nursery, config or EngineConfig(), device or detect_device())
        try:
            yield engine
        finally:
            with trio.CancelScope(shield=True):
                await engine.aclose()
            nursery.cancel_scope.cancel()
