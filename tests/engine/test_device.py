"""What the machine runs models on, read from a stand-in ``nvidia-smi``."""

import os
from pathlib import Path

import pytest

from hexamesh.engine.device import Device, detect_device
from tests.engine.fake_gpu import FakeGpu

MIB = 2**20


def test_a_gpu_is_read_from_nvidia_smi(fake_gpu: FakeGpu) -> None:
    assert detect_device() == Device(
        gpu=True, name="NVIDIA H200", gpu_total=143771 * MIB, gpu_free=143000 * MIB
    )
    assert fake_gpu.calls() == [
        "--query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits"
    ]


def test_each_call_is_a_fresh_reading_of_the_first_gpu(fake_gpu: FakeGpu) -> None:
    fake_gpu.prints("NVIDIA H200, 143771, 20000\nNVIDIA H200, 143771, 143000")
    assert detect_device().gpu_free == 20000 * MIB
    fake_gpu.reads(143771, 9000)
    assert detect_device().gpu_free == 9000 * MIB


def test_memory_nvidia_smi_cannot_read_is_unknown_not_zero(fake_gpu: FakeGpu) -> None:
    fake_gpu.prints("GRID A100D-40C, [N/A], [Insufficient Permissions]")
    assert detect_device() == Device(gpu=True, name="GRID A100D-40C")


@pytest.mark.parametrize(
    "output, rc",
    [
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9),
        ("No devices were found", 6),
        ("", 0),
        ("garbage", 0),
    ],
)
def test_a_broken_or_empty_nvidia_smi_means_the_cpu(
    fake_gpu: FakeGpu, output: str, rc: int
) -> None:
    fake_gpu.prints(output, rc)
    assert detect_device() == Device(gpu=False, name="cpu")


def test_the_cpu_can_be_forced_on_a_gpu_machine(
    fake_gpu: FakeGpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEXAMESH_DEVICE", "cpu")
    assert detect_device() == Device(gpu=False, name="cpu")
    assert fake_gpu.calls() == []  # not even asked


def test_no_nvidia_smi_means_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("HEXAMESH_DEVICE", raising=False)
    assert not any((Path(p) / "nvidia-smi").exists() for p in os.environ["PATH"].split(":"))
    assert detect_device() == Device(gpu=False, name="cpu")
