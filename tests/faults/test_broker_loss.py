"""A 3-node cluster loses brokers to kill -9 while ingest takes a steady stream of webhooks.

Every event answered 200 must be in the log exactly once; every other answer must be a
503 given within the bound (Stripe retries those).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from refstream import localkafka
from refstream.commands.topics import create_topics
from schemas.topics import H_EVENT_ID, Topics
from tests.conftest import FIXTURES, sign
from tests.faults.conftest import Reliability, ingest_server, restart_nodes
from tests.ingest.helpers import SANDBOX_SECRET, body_of, envelope, read_topic, settings

BOUND_S = 3.0
# how long a killed broker stays dead before its restart begins (the restart itself, a JVM
# start, keeps it away several seconds more)
DOWN_S = 3.0
INVOICE = json.loads((FIXTURES / "current" / "invoice.json").read_text())


async def _topic_layout(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The topic's partitions as some broker sees them (a new topic reaches each broker's
    metadata at its own pace, so wait for it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [t for t in await admin.describe_topics() if t["topic"] == topic]
            if found and found[0]["partitions"]:
                return list(found[0]["partitions"])
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic} is not in the cluster's metadata after {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _wait_full_isr(bootstrap: str, topic: str, timeout_s: float = 90.0) -> None:
    """A restarted broker is 'back' once it is in sync again on every partition."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            layout = asyncio.run(_topic_layout(bootstrap, topic))
            if layout and all(len(p["isr"]) == 3 for p in layout):
                return
        except Exception:  # the cluster may still be electing; retry until the deadline
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas of {topic} did not catch up within {timeout_s}s")
        time.sleep(0.5)


def test_three_node_cluster_topics_have_three_replicas_and_min_isr_two(cluster3: localkafka.Cluster,
                                                                       topic_prefix: str) -> None:
    async def check() -> None:
        await create_topics(cluster3.bootstrap, ["sandbox"], prefix=topic_prefix, partitions=3)
        topic = Topics("sandbox", topic_prefix).stripe_events
        layout = await _topic_layout(cluster3.bootstrap, topic)
        assert len(layout) == 3
        assert all(len(p["replicas"]) == 3 for p in layout)
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster3.bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + 30
            while True:  # the broker asked may learn of the new topic a moment later
                [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
                error_code, _, _, _, config = response.resources[0]
                entries = {e[0]: e[1] for e in config}
                if error_code == 0 and entries:
                    break
                assert time.monotonic() < deadline, f"no configs for {topic}: error {error_code}"
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        assert entries["min.insync.replicas"] == "2"
        assert entries["retention.ms"] == "-1"

    asyncio.run(check())


class Load:
    """A steady stream of distinct signed events from its own thread and event loop."""

    def __init__(self, url: str, *, workers: int = 4, pause_s: float = 0.02) -> None:
        self.url = url
        self.workers = workers
        self.pause_s = pause_s
        self.answers: list[tuple[str, int, float]] = []  # (event id, status, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        counter = iter(range(10**9))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def worker() -> None:
                while not self._stop.is_set():
                    n = next(counter)
                    event_id = f"evt_loss{n:07d}"
                    invoice = {**INVOICE, "id": f"in_loss{n:07d}", "customer": f"cus_loss{n % 97:03d}"}
                    body = body_of(envelope(invoice, "invoice.paid", livemode=False, event_id=event_id))
                    started = time.monotonic()
                    async with session.post(self.url, data=body,
                                            headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)}) as r:
                        await r.read()
                        self.answers.append((event_id, r.status, time.monotonic() - started))
                    await asyncio.sleep(self.pause_s)

            await asyncio.gather(*(worker() for _ in range(self.workers)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def count(self) -> int:
        return len(self.answers)


def test_broker_loss_under_load_loses_and_duplicates_no_acknowledged_event(
    cluster3: localkafka.Cluster, topic_prefix: str, reliability: Reliability
) -> None:
    bootstrap = cluster3.bootstrap
    asyncio.run(create_topics(bootstrap, ["sandbox"], prefix=topic_prefix, partitions=6))
    topic = Topics("sandbox", topic_prefix).stripe_events
    cfg = settings(bootstrap, produce_timeout_s=BOUND_S)
    kills = []
    with ingest_server(cfg, topic_prefix) as server, Load(server.url()) as load:
        _wait(lambda: load.count() >= 30, 30)
        for node_id in (1, 2):
            localkafka.stop_node(cluster3.node(node_id), hard=True)  # kill -9
            kills.append(node_id)
            time.sleep(DOWN_S)  # the stream goes on while the broker is gone
            restart_nodes(cluster3)
            _wait_full_isr(bootstrap, topic)
        before = load.count()
        _wait(lambda: load.count() >= before + 30, 30)
    answers = list(load.answers)

    statuses = Counter(status for _, status, _ in answers)
    acknowledged = [event_id for event_id, status, _ in answers if status == 200]
    refused = [event_id for event_id, status, _ in answers if status != 200]
    stored = Counter(dict(r.headers)[H_EVENT_ID].decode() for r in asyncio.run(read_topic(bootstrap, topic)))
    lost = [e for e in acknowledged if stored[e] == 0]
    duplicated = [e for e in acknowledged if stored[e] > 1]
    slowest = max(seconds for _, _, seconds in answers)
    reliability.record(
        "test_broker_loss_under_load",
        what="3 brokers, RF 3, min ISR 2; kill -9 broker 1, bring back, then broker 2",
        sent=len(answers), acknowledged=len(acknowledged), refused=len(refused), lost=len(lost),
        duplicated=len(duplicated),
        server_errors=sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        notes=f"slowest answer {slowest:.2f} s (bound {BOUND_S:g} s); "
              f"{sum(1 for e in refused if stored[e])} refused events were stored anyway",
    )
    assert set(statuses) <= {200, 503}, statuses
    assert not lost, lost[:5]
    assert not duplicated, duplicated[:5]
    assert slowest < BOUND_S + 1.5
    assert len(acknowledged) > 0.5 * len(answers)  # the cluster kept taking writes


def _wait(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"load did not progress within {timeout_s}s")
        time.sleep(0.1)
