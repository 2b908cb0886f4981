"""With the broker stopped ingest answers 503 within its bound, never 200; after it is back, 200.

This test starts a private broker of its own (other ports, its own data dir), so the
session broker other tests use is never stopped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refstream import localkafka
from schemas.topics import H_EVENT_ID, Topics
from tests.conftest import FIXTURES, _free_port_pair, sign
from tests.ingest.helpers import (
    SANDBOX_SECRET,
    body_of,
    envelope,
    make_topics,
    read_topic,
    running_ingest,
    settings,
)

BOUND_S = 2.0
CUSTOMER = json.loads((FIXTURES / "current" / "customer.json").read_text())


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[localkafka.Cluster]:
    cluster = localkafka.Cluster(tmp_path / "kafka", port=_free_port_pair())
    localkafka.up(cluster)
    try:
        yield cluster
    finally:
        localkafka.down(cluster.data_dir)


def _event(n: int) -> bytes:
    return body_of(envelope(CUSTOMER, "customer.updated", livemode=False, event_id=f"evt_outage{n:03d}"))


async def test_broker_stopped_means_503_within_the_bound_then_recovery(
    private_broker: localkafka.Cluster, topic_prefix: str
) -> None:
    bootstrap = private_broker.bootstrap
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    acknowledged: list[str] = []

    async with running_ingest(settings(bootstrap, produce_timeout_s=BOUND_S), topic_prefix) as client:

        async def deliver(n: int) -> tuple[int, float, dict[str, object]]:
            body = _event(n)
            started = time.monotonic()
            resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                     headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
            doc = await resp.json()
            if resp.status == 200:
                acknowledged.append(f"evt_outage{n:03d}")
            return resp.status, time.monotonic() - started, doc

        status, _, _ = await deliver(0)
        assert status == 200

        await asyncio.to_thread(localkafka.stop_node, private_broker.node(1))
        answers = await asyncio.gather(*(deliver(n) for n in range(1, 6)))
        for status, elapsed, doc in answers:
            assert status == 503, doc
            assert elapsed < BOUND_S + 1.0
            assert doc["error"]["code"] in {"kafka_timeout", "kafka_unreachable", "kafka_error"}  # type: ignore[index]
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200

        await asyncio.to_thread(localkafka.up, private_broker)
        deadline = time.monotonic() + 60
        n = 100
        while True:
            status, elapsed, _ = await deliver(n)
            assert status in (200, 503)
            assert elapsed < BOUND_S + 1.0
            if status == 200:
                break
            assert time.monotonic() < deadline, "ingest did not recover within 60 s of the broker's restart"
            n += 1
        # and from then on deliveries succeed
        for m in range(n + 1, n + 4):
            status, _, _ = await deliver(m)
            assert status == 200

    stored = [dict(r.headers)[H_EVENT_ID].decode()
              for r in await read_topic(bootstrap, Topics("sandbox", topic_prefix).stripe_events)]
    for event_id in acknowledged:
        assert stored.count(event_id) == 1, event_id
