"""Every simulation and benchmark runs at a small scale and ends with one JSON line."""

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.engine.fake_gpu import FakeGpu


def last_json(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_netbench_small() -> None:
    r = last_json(
        "simulations.netbench",
        "--nodes",
        "500",
        "--messages",
        "20000",
        "--iterations",
        "200",
        "--json",
    )
    for key in (
        "sim_msgs_per_s",
        "seal_open_us",
        "codec_us",
        "sim_vs_heap_floor",
        "seal_vs_raw_aead",
    ):
        assert isinstance(r[key], (int, float)) and r[key] > 0
    assert r["messages"] >= 20_000


@pytest.mark.parametrize(("kill", "loss"), [("0", "0"), ("0.3", "0.05")])
def test_dht_simulation_small(kill: str, loss: str) -> None:
    r = last_json(
        "simulations.dht",
        "--nodes",
        "150",
        "--lookups",
        "40",
        "--oracle",
        "20",
        "--kill",
        kill,
        "--loss",
        loss,
        "--seed",
        "2",
        "--json",
    )
    for key in (
        "nodes",
        "hops_p50",
        "hops_p99",
        "lookup_ms_p50",
        "lookup_ms_p99",
        "success_rate",
        "msgs_per_lookup",
        "wall_s",
    ):
        assert key in r
    assert r["joined"] == 150 and r["finished"] == 40
    assert r["success_rate"] == 1.0
    assert r["oracle_match_rate"] == 1.0


def test_comb_simulation_small() -> None:
    r = last_json(
        "simulations.comb",
        "--nodes",
        "60",
        "--kill",
        "0.2",
        "--loss",
        "0.05",
        "--minutes",
        "1.1",  # long enough for the traffic after the kill (its last 30 s)
        "--seed",
        "3",
        "--json",
    )
    for key in (
        "detect_first_s_p50",
        "detect_first_s_p99",
        "detect_all_s_p99",
        "false_positives",
        "msgs_per_node_s",
        "bytes_per_node_s",
        "view_staleness_s_p99",
        "links_mean",
        "links_max",
        "holes",
        "connected",
        "wall_s",
    ):
        assert key in r
    assert r["undetected"] == 0 and r["false_positives"] == 0
    assert r["connected"] is True and r["links_max"] <= 6
    assert r["msgs_per_node_s"] <= 10
    assert r["msgs_per_node_s_late"] <= 10
    assert r["bytes_per_node_s_late"] <= 4000
    # the death wave is counted: news to carry makes it busier than the steady state
    assert r["msgs_per_node_s_wave"] > r["msgs_per_node_s"]
    assert r["bytes_per_node_s_wave"] > r["bytes_per_node_s"]


def test_comb_simulation_under_churn_holds_flat_state() -> None:
    """Ten new identities a minute for 20 minutes at 60 nodes: every churned
    death detected, none false, and per node no more held at the end than 10
    minutes in (with push-pulls teaching strangers' deaths: 178 -> 215)."""
    r = last_json(
        "simulations.comb",
        *("--nodes", "60", "--kill", "0.2", "--churn", "0.1", "--minutes", "20"),
        *("--loss", "0.05", "--seed", "3", "--json"),
    )
    assert r["churned"] >= 100 and r["churn_deaths_undetected"] == 0
    assert r["false_positives"] == 0 and r["connected"] is True
    assert r["state_entries_p99_end"] <= 1.1 * r["state_entries_p99_start"]
    assert 0 < r["msgs_per_node_s_late"] <= 15 and r["bytes_per_node_s_late"] > 0


def test_traffic_is_counted_over_the_hosts_there_at_both_ends() -> None:
    from simulations.comb import _per_node_s

    before = {1: (100, 1000), 2: (50, 500)}  # host 2 then crashes; host 3 joins
    after = {1: (110, 1200), 3: (5, 50)}
    assert _per_node_s(before, after, 2.0) == (5.0, 100.0)


@pytest.mark.parametrize(
    "argv",
    [
        (
            "simulations.comb",
            "--nodes",
            "100",
            "--kill",
            "0.3",
            "--loss",
            "0.05",
            "--minutes",
            "0.5",
        ),
        (
            "simulations.dht",
            "--nodes",
            "60",
            "--lookups",
            "20",
            "--oracle",
            "5",
            "--kill",
            "0.3",
            "--loss",
            "0.05",
        ),
    ],
)
def test_a_seed_replays_exactly_whatever_the_hash_seed(argv: tuple[str, ...]) -> None:
    # Python randomises str/bytes hashing per process; no result may depend on it.
    runs = []
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", *argv, "--seed", "4", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.pop("wall_s")
        result.pop("join_wall_s", None)
        runs.append(result)
    assert runs[0] == runs[1]


def test_placement_simulation_small() -> None:
    r = last_json(
        "simulations.placement",
        "--rings",
        "3",
        "--elections",
        "6",
        "--loss",
        "0.1",
        "--seed",
        "2",
        "--json",
    )
    assert r["nodes"] == 37 and r["reachable"] == 4 and r["cut_off"] == 2
    assert r["placed"] == r["reachable"] == r["proposer_heard_all"]
    assert r["no_quorum_moved"] == 0 and r["over_placed"] == 0
    assert isinstance(r["time_to_quorum_s_p99"], float) and r["time_to_quorum_s_p99"] < 2.0


def test_gpucheck_on_a_stand_in_gpu_and_vllm(fake_gpu: FakeGpu) -> None:
    r = last_json("simulations.gpucheck", "--json", "--server-module", "tests.engine.fake_vllm")
    assert r["gpu"] == "NVIDIA H200" and r["detect_matches"] is True
    assert "would take 140.3 GiB" in str(r["too_big_refused"])
    assert r["server_share"] == 0.425  # 0.85 over --max-models 2
    assert r["dance_gpu_total_mib"] == 143_771 and r["dance_gpu_used_mib"] == 771
    assert r["dance_matches"] is True
    assert r["completion_status"] == 200 and r["completion_tokens"] == 16


def test_gpucheck_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXAMESH_DEVICE", "cpu")
    out = subprocess.run(
        [sys.executable, "-m", "simulations.gpucheck", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "no NVIDIA GPU here" in out.stderr
