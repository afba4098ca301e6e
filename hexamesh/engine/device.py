"""What this machine can run models on: an NVIDIA GPU (via ``nvidia-smi``) or the CPU.

``nvidia-smi`` rather than ``torch.cuda``: asking torch would initialise CUDA
in the agent process (slow, and it holds GPU memory) just to read two numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GPU_SHARE", "Device", "detect_device", "model_bytes"]

# Of a GPU's memory, what one agent's vLLM servers take together (vLLM's own
# default for one server is 0.9): the rest holds each server's CUDA context and
# leaves other processes on the GPU some room. Here, not in the supervisor, so
# that the configuration can name it without importing trio and httpx.
GPU_SHARE = 0.85


@dataclass(frozen=True)
class Device:
    gpu: bool
    name: str  # "NVIDIA H100 80GB HBM3", or "cpu"
    gpu_total: int | None = None  # bytes
    gpu_free: int | None = None  # bytes

    @staticmethod
    def ram_available() -> int:
        """Bytes of RAM available now (MemAvailable), for the CPU fit check."""
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def detect_device() -> Device:
    """The first NVIDIA GPU if ``nvidia-smi`` lists one, else the CPU.

    ``HEXAMESH_DEVICE=cpu`` forces the CPU (a GPU machine running the CPU build).
    Call it again for a fresh reading of the GPU's memory (~20 ms on an H200: a subprocess).
    """
    if os.environ.get("HEXAMESH_DEVICE", "").lower() == "cpu" or not shutil.which("nvidia-smi"):
        return Device(gpu=False, name="cpu")
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return Device(gpu=False, name="cpu")  # a driver nvidia-smi cannot talk to
    first = out.strip().splitlines()[0] if out.strip() else ""
    parts = [p.strip() for p in first.split(",")]
    if len(parts) != 3 or not parts[0]:
        return Device(gpu=False, name="cpu")
    return Device(gpu=True, name=parts[0], gpu_total=_mib(parts[1]), gpu_free=_mib(parts[2]))


def _mib(field: str) -> int | None:
    """Bytes from one of nvidia-smi's MiB fields; None where it prints "[N/A]" or
    "[Insufficient Permissions]" (some virtual GPUs): memory unknown, not zero."""
    try:
        return int(field) * 2**20
    except ValueError:
        return None


def looks_like_path(model: str) -> bool:
    """Is a ``--model`` source written as a path (not a hub id like ``org/name``)?"""
    return model.startswith(("/", "./", "../", "~")) or model in (".", "..")


def model_bytes(model: str) -> int:
    """Size of a local model's weight files (0 for a hub id: unknown until downloaded)."""
    path = Path(model)
    if not path.is_dir():
        return 0
    return sum(
        f.stat().st_size
        for f in path.iterdir()
        if f.suffix in (".safetensors", ".bin", ".pt", ".gguf") and f.is_file()
    )
