"""The load signal: vLLM's Prometheus metrics folded into one number in [0, 1].

vLLM exports (among others) ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (0..1; older
versions ``vllm:gpu_cache_usage_perc``), ``vllm:generation_tokens_total`` and
the ``vllm:time_to_first_token_seconds`` histogram. ``EngineLoad.from_samples``
reads one scrape and the previous one (for rates) and computes

    load = max(kv, busy, queue)
    kv    = KV-cache use (0..1): the memory that bounds how many more
            requests fit
    busy  = running / max_num_seqs: the batch slots in use
    queue = waiting / (waiting + max_num_seqs): requests the scheduler could
            not admit; 1 request waiting per free slot is load 0.5

The maximum, not a mean: any one of them saturated means a new request waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["EngineLoad", "parse_metrics"]

DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default batch size (--max-num-seqs)


# The samples EngineLoad reads. vLLM exports dozens of histograms with many
# buckets; the full text costs ~200 ms of CPU per parse (a quarter of a core at
# one scrape a second, measured), so lines are filtered before parsing.
WANTED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
)


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each wanted vLLM sample over its labels (one server serves one model):
    ``{"vllm:num_requests_running": 3.0, ...}``."""
    lines = [line for line in text.splitlines() if line.startswith(WANTED)]
    out: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name in WANTED:
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLoad:
    load: float  # 0..1, see the module docstring
    running: int
    waiting: int
    kv: float  # KV-cache use, 0..1
    tok_s: float  # generated tokens per second since the previous scrape
    ttft_s: float | None  # mean time to first token since the previous scrape

    @classmethod
    def idle(cls) -> EngineLoad:
        return cls(load=0.0, running=0, waiting=0, kv=0.0, tok_s=0.0, ttft_s=None)

    @classmethod
    def from_samples(
        cls,
        now: dict[str, float],
        before: dict[str, float] | None,
        interval: float,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    ) -> EngineLoad:
        running = int(now.get("vllm:num_requests_running", 0.0))
        waiting = int(now.get("vllm:num_requests_waiting", 0.0))
        kv = now.get("vllm:kv_cache_usage_perc", now.get("vllm:gpu_cache_usage_perc", 0.0))
        kv = min(1.0, max(0.0, kv))
        tok_s = 0.0
        ttft: float | None = None
        if before is not None and interval > 0:
            gen = "vllm:generation_tokens_total"
            tok_s = max(0.0, now.get(gen, 0.0) - before.get(gen, 0.0)) / interval
            count = now.get("vllm:time_to_first_token_seconds_count", 0.0) - before.get(
                "vllm:time_to_first_token_seconds_count", 0.0
            )
            total = now.get("vllm:time_to_first_token_seconds_sum", 0.0) - before.get(
                "vllm:time_to_first_token_seconds_sum", 0.0
            )
            if count > 0:
                ttft = total / count
        busy = min(1.0, running / max_num_seqs)
        queue = waiting / (waiting + max_num_seqs)
        return cls(
            load=round(max(kv, busy, queue), 4),
            running=running,
            waiting=waiting,
            kv=kv,
            tok_s=tok_s,
            ttft_s=ttft,
        )
