"""Prometheus metrics of one ingest app (a registry per app, so tests can build many)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    produce_errors: Counter
    # label children by their values: `labels()` validates and locks on every call, and
    # the webhook path asks for the same few children thousands of times a second
    _request_children: dict[tuple[str, int, str], Counter] = field(default_factory=dict)
    _latency_children: dict[str, Histogram] = field(default_factory=dict)

    @classmethod
    def create(cls) -> IngestMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "refstream_ingest_requests",
                "Webhook requests by environment, HTTP status and outcome "
                "(written, ignored, or the error code).",
                ["env", "status", "outcome"],
                registry=registry,
            ),
            latency=Histogram(
                "refstream_ingest_request_seconds",
                "Time from request start to answer, webhook requests only.",
                ["env"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            produce_errors=Counter(
                "refstream_ingest_produce_errors",
                "Writes to Kafka that were not confirmed (the request was answered 503).",
                ["env", "reason"],
                registry=registry,
            ),
        )

    def request_done(self, env: str, status: int, outcome: str, seconds: float) -> None:
        """Count one webhook request and observe its latency."""
        counter = self._request_children.get((env, status, outcome))
        if counter is None:
            counter = self.requests.labels(env, str(status), outcome)
            self._request_children[(env, status, outcome)] = counter
        counter.inc()
        latency = self._latency_children.get(env)
        if latency is None:
            latency = self._latency_children[env] = self.latency.labels(env)
        latency.observe(seconds)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # `refstream ingest --workers N`: the counts of every worker, from their files
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
