"""Test helpers: fresh topics and records written the way ingest and the CLI store them.

Records go to the broker with aiokafka directly (not through ingest), with explicit
timestamps, so a test controls the order replay must merge them in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import FOREVER, H_ENV, H_EVENT_ID, H_EVENT_TYPE, H_RECEIVED_AT, Topics


@dataclass(frozen=True)
class Stored:
    """One record to write: to the stripe-events topic (`control=False`) or the control topic."""

    value: bytes
    timestamp_ms: int
    key: bytes | None = None
    control: bool = False
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def stripe_record(body: bytes, *, customer: str, event_id: str, event_type: str, timestamp_ms: int,
                  env: str = "sandbox") -> Stored:
    """A stripe-events record as ingest stores it (docs/design.md): key = customer, value = raw body."""
    headers = [
        (H_EVENT_ID, event_id.encode()),
        (H_EVENT_TYPE, event_type.encode()),
        (H_ENV, env.encode()),
        (H_RECEIVED_AT, str(timestamp_ms).encode()),
    ]
    return Stored(body, timestamp_ms, customer.encode(), False, headers)


async def create_topics(bootstrap: str, topics: Topics, stripe_partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # kept forever, as `refstream topics create` configures them: the test records carry
        # 2026 timestamps, which a default 7-day retention would delete under the reader
        await admin.create_topics([
            NewTopic(topics.stripe_events, stripe_partitions, 1, topic_configs=dict(FOREVER)),
            NewTopic(topics.control, 1, 1, topic_configs=dict(FOREVER)),
        ])
    finally:
        await admin.close()


async def write(bootstrap: str, topics: Topics, records: Sequence[Stored]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topics.control if r.control else topics.stripe_events,
                value=r.value, key=r.key, timestamp_ms=r.timestamp_ms, headers=r.headers,
            )
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, names: Sequence[str] | None = None, *,
                      prefix: str = "") -> dict[TopicPartition, int]:
    """End offsets of the named topics, or of every topic on the broker whose name starts with
    `prefix` (a test's own topics: other tests' leftovers on the shared broker may be half
    deleted and would only make the check flaky)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        chosen = (sorted(t for t in await admin.list_topics() if t.startswith(prefix))
                  if names is None else list(names))
        described = await admin.describe_topics(chosen)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    assert tps, "no partitions found: nothing to compare"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, prefix: str = "") -> dict[str, dict[TopicPartition, int]]:
    """Every consumer group on the broker; committed offsets for those named `prefix…`
    (every group's name is kept, so a group that replay added would show)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups())
        return {
            g: {tp: om.offset for tp, om in (await admin.list_consumer_group_offsets(g)).items()}
            if g.startswith(prefix) else {}
            for g in groups
        }
    finally:
        await admin.close()


async def commit_as_group(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commits offsets the way a live worker's group would, so a test has something to guard."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()
