"""The proxy's Prometheus metrics (`GET /metrics`), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.wakes = Counter("strata_proxy_wakes", "computes woken for a database", registry=self.registry)
        self.wake_seconds = Histogram(
            "strata_proxy_wake_seconds",
            "from a request reaching a suspended database to its compute being ready",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.suspends = Counter(
            "strata_proxy_suspends", "computes stopped, by reason (idle, lru, shutdown)", ["reason"], registry=self.registry
        )
        self.compute_deaths = Counter("strata_proxy_compute_deaths", "computes that exited unasked", registry=self.registry)
        self.running = Gauge("strata_proxy_running_computes", "computes serving a database now", registry=self.registry)
        self.pool = Gauge("strata_proxy_pool_computes", "pre-started computes waiting for a database", registry=self.registry)
        self.requests = Counter(
            "strata_proxy_requests", "HTTP requests, by outcome (ok, client_error, server_error)", ["outcome"],
            registry=self.registry,
        )
