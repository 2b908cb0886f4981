"""Helpers for tests that run ingest against a real broker: build it, post to it, read the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from ingest.app import create_app
from ingest.producer import EventLog
from ingest.server import IngestRunner
from refstream.commands.topics import create_topics
from refstream.settings import Settings

SANDBOX_SECRET = "whsec_sandbox_current_0123456789abcdef"
SANDBOX_OLD_SECRET = "whsec_sandbox_previous_0123456789abcdef"
PRODUCTION_SECRET = "whsec_production_0123456789abcdef"


def settings(bootstrap: str, **overrides: Any) -> Settings:
    base = Settings(
        kafka_bootstrap=bootstrap,
        stripe_secrets={"sandbox": (SANDBOX_SECRET, SANDBOX_OLD_SECRET), "production": (PRODUCTION_SECRET,)},
        produce_timeout_s=5.0,
    )
    return replace(base, **overrides)


async def make_topics(bootstrap: str, prefix: str, envs: Sequence[str] = ("sandbox", "production"),
                      partitions: int = 3) -> None:
    await create_topics(bootstrap, envs, prefix=prefix, partitions=partitions)


class IngestTestServer(TestServer):
    """aiohttp's TestServer, serving through IngestRunner as `refstream ingest` does."""

    async def _make_runner(self, **kwargs: Any) -> IngestRunner:
        return IngestRunner(self.app, **kwargs)


@asynccontextmanager
async def running_ingest(
    cfg: Settings, prefix: str, **app_kwargs: Any
) -> AsyncIterator[TestClient[Any, Any]]:
    """ingest on a real socket on a free 127.0.0.1 port, with a client for it."""
    event_log = EventLog(cfg.kafka_bootstrap, timeout_s=cfg.produce_timeout_s)
    app = create_app(cfg, event_log, topic_prefix=prefix, **app_kwargs)
    client = TestClient(IngestTestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def envelope(obj: dict[str, Any], event_type: str, *, livemode: bool, event_id: str) -> dict[str, Any]:
    """Wrap a Stripe object in the event envelope Stripe delivers."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-06-24.dahlia",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def body_of(doc: dict[str, Any]) -> bytes:
    # indented, with a trailing newline: byte-identity must not depend on compact JSON
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(
    bootstrap: str, topic: str, *, timeout_s: float = 15.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in the topic (read up to the end offsets seen at the start)."""
    ends = await end_offsets(bootstrap, topic)
    wanted = {p: e for p, e in ends.items() if e > 0}
    records: list[ConsumerRecord[bytes, bytes]] = []
    if not wanted:
        return records
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        done: set[int] = set()
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout_s}s")
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
            for p, end in wanted.items():
                if await consumer.position(TopicPartition(topic, p)) >= end:
                    done.add(p)
    finally:
        await consumer.stop()
    return records


async def wait_for(predicate: Any, *, timeout_s: float, interval_s: float = 0.2) -> Any:
    """Poll an async predicate until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
