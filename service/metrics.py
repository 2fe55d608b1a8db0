"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).

With several uvicorn workers, `gru4rec serve` sets PROMETHEUS_MULTIPROC_DIR and /metrics then
aggregates every worker's values (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class Metrics:
    """Every metric the service exports, created once per app."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gru4rec_http_requests_total", "HTTP requests by endpoint and status", ["method", "endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "gru4rec_http_request_duration_seconds", "HTTP request latency by endpoint",
            ["method", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.clicked_items = Counter("gru4rec_clicked_items_total", "item ids received as clicks", registry=r)
        self.unknown_items = Counter(
            "gru4rec_unknown_items_total", "clicked item ids the model does not know (rate = this / clicked_items)", registry=r
        )
        self.fallbacks = Counter(
            "gru4rec_popularity_fallback_total", "answers from popularity (no known item in the session)", registry=r
        )
        self.sessions = Gauge(
            "gru4rec_sessions", "live sessions in the session store", registry=r, multiprocess_mode="livemostrecent"
        )
        self.evictions = Counter(
            "gru4rec_session_evictions_total", "sessions dropped by the in-process store", ["reason"], registry=r
        )
        self.rebuilds = Counter(
            "gru4rec_session_rebuilds_total", "session states recomputed after a model change", registry=r
        )
        self.model_info = Gauge(
            "gru4rec_model_info", "1 for the model version being served", ["version"], registry=r, multiprocess_mode="livemax"
        )
        self.model_items = Gauge("gru4rec_model_items", "items in the served model", registry=r, multiprocess_mode="livemax")
        self.reloads = Counter("gru4rec_model_reloads_total", "model reload attempts by result", ["result"], registry=r)
        self.index_build = Gauge(
            "gru4rec_index_build_seconds", "time the served model's top-k index took to build (0: loaded from the "
            "cache, or exact scoring)", registry=r, multiprocess_mode="livemax",
        )
        self.damaged_sessions = Counter(
            "gru4rec_session_damaged_total", "stored sessions that could not be read or did not fit the model "
            "(started afresh and overwritten)", registry=r,
        )
        self.batch_size = Histogram(
            "gru4rec_batch_size", "requests served by one batched GRU step and score product",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.batch_wait = Histogram(
            "gru4rec_batch_wait_seconds", "time the first request of a batch waited before the batch ran "
            "(for company, or behind the batch before)", buckets=WAIT_BUCKETS, registry=r,
        )
        self._version: str | None = None
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:  # labels() costs a few microseconds per call: look each series up once
            children = self._children[key] = (
                self.requests.labels(method, endpoint, str(status)), self.latency.labels(method, endpoint)
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, size: int, waited_s: float) -> None:
        """Called by the batcher's thread (prometheus-client's metrics are thread-safe)."""
        self.batch_size.observe(size)
        self.batch_wait.observe(waited_s)

    def on_evict(self, reason: str, n: int) -> None:
        self.evictions.labels(reason).inc(n)

    def set_model(self, version: str, n_items: int, index_build_s: float | None = None) -> None:
        if self._version is not None and self._version != version:
            self.model_info.labels(self._version).set(0)
        self._version = version
        self.model_info.labels(version).set(1)
        self.model_items.set(n_items)
        self.index_build.set(index_build_s or 0.0)

    def render(self) -> bytes:
        """The text exposition; across all workers in multiprocess mode."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
