"""The load signal from a real vLLM 0.32 /metrics page (tests/engine/vllm_metrics.txt,
saved from the tiny model's server after a benchmark)."""

from pathlib import Path

import pytest

from hexamesh.engine.load import EngineLoad, parse_metrics

PAGE = (Path(__file__).parent / "vllm_metrics.txt").read_text()


def test_parse_reads_the_wanted_samples_of_a_real_page() -> None:
    got = parse_metrics(PAGE)
    assert got["vllm:generation_tokens_total"] == 71680.0
    assert got["vllm:time_to_first_token_seconds_count"] == 560.0
    assert got["vllm:time_to_first_token_seconds_sum"] == pytest.approx(22.0223, abs=1e-3)
    assert got["vllm:num_requests_running"] == 0.0 and got["vllm:kv_cache_usage_perc"] == 0.0
    assert not any(k.endswith("_bucket") for k in got)


@pytest.mark.parametrize(
    ("running", "waiting", "kv", "load"),
    [(0, 0, 0.0, 0.0), (128, 0, 0.1, 0.5), (0, 256, 0.0, 0.5), (16, 0, 0.9, 0.9)],
)
def test_load_is_the_worst_of_kv_batch_and_queue(
    running: int, waiting: int, kv: float, load: float
) -> None:
    now = {
        "vllm:num_requests_running": running,
        "vllm:num_requests_waiting": waiting,
        "vllm:kv_cache_usage_perc": kv,
    }
    assert EngineLoad.from_samples(now, None, 1.0).load == pytest.approx(load)


def test_rates_between_scrapes() -> None:
    before = parse_metrics(PAGE)
    now = {**before, "vllm:generation_tokens_total": before["vllm:generation_tokens_total"] + 500}
    now["vllm:time_to_first_token_seconds_count"] += 2
    now["vllm:time_to_first_token_seconds_sum"] += 0.5
    got = EngineLoad.from_samples(now, before, 2.0)
    assert got.tok_s == 250.0 and got.ttft_s == pytest.approx(0.25)
