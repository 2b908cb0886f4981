"""Prometheus metrics of one ingest app (a registry per app, so tests can build many)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    produce_errors: Counter

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
