"""Prometheus metrics of one agent, in their own registry (served at /metrics).

Counters are bumped per request, never per token: the relay counts the
tokens of a stream once it ends (one ``bytes.count`` over what it sent), as
content events: one per token, except where vLLM merged several into one
event (its frontend behind under load), so the count is a lower bound; the
engine's exact figure is vLLM's own ``vllm:generation_tokens_total``.
Swarm-level gauges (peers alive, gossip traffic, jobs) are read at scrape time
from callbacks the agent registers, so they cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServeMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


Labelled = tuple[str, str, str, Callable[[], Mapping[str, float]]]  # kind, doc, label, values


class _Callbacks(Collector):
    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.labelled: dict[str, Labelled] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, fn) in self.gauges.items():
            yield GaugeMetricFamily(name, doc, value=fn())
        for name, (doc, fn) in self.counters.items():
            yield CounterMetricFamily(name, doc, value=fn())
        for name, (kind, doc, label, values) in self.labelled.items():
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, doc, labels=[label])
            else:
                family = GaugeMetricFamily(name, doc, labels=[label])
            for value_label, value in sorted(values().items()):
                family.add_metric([value_label], value)
            yield family


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hexamesh_requests", "API requests answered", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "hexamesh_request_seconds",
            "Time to answer an API request (to its last byte)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "hexamesh_tokens",
            "Streamed tokens relayed to clients, counted as SSE events (a lower bound)",
            registry=r,
        )
        self.forwards = Counter("hexamesh_forwards", "Requests sent on to a peer", registry=r)
        self.failovers = Counter(
            "hexamesh_failovers",
            "Requests moved to another server before their first token",
            registry=r,
        )
        self.continuations = Counter(
            "hexamesh_continuations", "Streams continued on another server mid-answer", registry=r
        )
        self.priorities = Counter(
            "hexamesh_requests_by_priority",
            "Completion requests from clients, by the priority they were given",
            ["priority"],
            registry=r,
        )
        self._callbacks = _Callbacks()
        r.register(self._callbacks)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self._callbacks.gauges[name] = (doc, fn)

    def counter(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self._callbacks.counters[name] = (doc, fn)

    def labelled(
        self, kind: str, name: str, doc: str, label: str, fn: Callable[[], Mapping[str, float]]
    ) -> None:
        """A family with one label (``kind``: "gauge" or "counter"), read at scrape time."""
        self._callbacks.labelled[name] = (kind, doc, label, fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
