"""The server's Prometheus metrics (GET /metrics), in a registry of its own."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..batching import engine_stats
from ..runtime import Realm

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Live(Collector):
    """What is read at scrape time: the engines' batching and prefix-cache figures, the queue,
    and the KV bytes of each tenant's running requests."""

    def __init__(self, realm: Realm, names: Callable[[int], str], queue: Callable[[], tuple[int, int, int]]):
        self.realm, self.names, self.queue = realm, names, queue

    def collect(self) -> Iterable:
        waiting, running, tenants = self.queue()
        yield GaugeMetricFamily("realm_queue_depth", "Requests waiting for a generation slot", value=waiting)
        yield GaugeMetricFamily("realm_running_requests", "Requests generating now", value=running)
        yield GaugeMetricFamily("realm_active_tenants", "Tenants with a request queued or running", value=tenants)
        batch = GaugeMetricFamily("realm_batch_size", "Sequences in the last forward pass", labels=["model"])
        mean = GaugeMetricFamily("realm_batch_mean_size", "Sequences per forward pass since start", labels=["model"])
        hits = CounterMetricFamily("realm_prefix_cache_hits", "Prompts that reused cached KV rows", labels=["model"])
        hit_tokens = CounterMetricFamily("realm_prefix_cache_hit_tokens", "KV rows reused from the prefix cache",
                                         labels=["model"])
        cached = GaugeMetricFamily("realm_prefix_cache_bytes", "Bytes of KV rows the prefix cache holds",
                                   labels=["model"])
        for (model_id, _), s in engine_stats(self.realm.store).items():
            name = self.names(model_id)
            batch.add_metric([name], s["last_sequences"])
            mean.add_metric([name], s["pass_sequences"] / s["passes"] if s["passes"] else 0.0)
            hits.add_metric([name], s["prefix_hits"])
            hit_tokens.add_metric([name], s["prefix_hit_tokens"])
            cached.add_metric([name], s["prefix_bytes"])
        yield from (batch, mean, hits, hit_tokens, cached)
        kv = GaugeMetricFamily("realm_tenant_kv_bytes", "KV cache bytes held by a tenant's running requests",
                               labels=["tenant"])
        for tenant, nbytes in sorted(self.realm.in_flight().items(), key=lambda kv: str(kv[0])):
            kv.add_metric([tenant or "-"], nbytes)
        yield kv


class Metrics:
    """Counters and histograms the request handlers update, and the live collector."""

    def __init__(self, realm: Realm, names: Callable[[int], str], queue: Callable[[], tuple[int, int, int]]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("realm_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("realm_prompt_tokens", "Prompt tokens of finished requests", ["model"],
                                     registry=r)
        self.completion_tokens = Counter("realm_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("realm_time_to_first_token_seconds", "From the request to its first token", ["model"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.tokens_per_second = Histogram("realm_tokens_per_second", "A request's decode speed", ["model"],
                                           buckets=(1, 5, 10, 25, 50, 100, 200, 400), registry=r)
        r.register(_Live(realm, names, queue))

    def render(self) -> bytes:
        return generate_latest(self.registry)
