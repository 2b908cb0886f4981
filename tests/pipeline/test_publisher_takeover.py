"""The publisher keeps trying to take over an outbox partition it failed to adopt.

A failed take-over (the transaction coordinator or the output topics' read-back not
answering in time) used to leave the partition without a producer until the next
rebalance: its commands waited silently while the worker reported ready."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processors.delivery import H_DEST
from processors.publisher import Publisher

pytestmark = pytest.mark.kafka


async def test_a_partition_whose_take_over_fails_is_taken_over_later(
    bootstrap: str, topic_prefix: str
) -> None:
    outbox, notifications = f"{topic_prefix}.outbox", f"{topic_prefix}.notifications"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (outbox, notifications)])
    finally:
        await admin.close()

    publisher = Publisher(bootstrap=bootstrap, app_id=f"{topic_prefix}-{uuid.uuid4().hex[:6]}",
                          outbox=outbox, outputs={"notifications": notifications}, partitions=1)
    read_back = publisher._published_ids
    failures = 2

    async def flaky_read_back(p: int) -> set[str]:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("could not read the output topics up to their end")
        return await read_back(p)

    publisher._published_ids = flaky_read_back  # type: ignore[method-assign]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        record = orjson.dumps({"notification_id": "ntf_takeover_1", "ucc": "ucc_A"})
        await producer.send_and_wait(outbox, record, key=b"ucc_A", partition=0,
                                     headers=[(H_DEST, b"notifications")])
    finally:
        await producer.stop()

    running = asyncio.create_task(publisher.run())
    reader = AIOKafkaConsumer(notifications, bootstrap_servers=bootstrap, group_id=None,
                              isolation_level="read_committed", auto_offset_reset="earliest")
    await reader.start()
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline and not running.done():
            batch = await reader.getmany(timeout_ms=500)
            seen += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
        assert seen == [record], "the partition's command never came out after a failed take-over"
        assert publisher.adopt_failures == 2
        assert 0 in publisher.producers and not publisher.retrying
    finally:
        await reader.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
