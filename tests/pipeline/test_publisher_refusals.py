"""A command the broker refuses is not committed past: its transaction is aborted and
redone until the broker takes it, and then every command of the partition comes out once.

aiokafka commits a transaction whose record batch the broker refused (it waits for the
batch to finish, not to succeed), so the publisher used to commit the outbox offset
without the refused command: lost, with nothing in the log but the broker's answer."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import GroupCoordinatorNotAvailableError

from processors.delivery import H_DEST
from processors.publisher import Publisher
from refstream.commands.review import read_to_end
from tests.pipeline.stack import until

pytestmark = pytest.mark.kafka


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(str(getattr(record, "error", record.getMessage())))


async def read_committed(bootstrap: str, topics: list[str]) -> list[bytes]:
    return [value for _, value in await read_to_end(bootstrap, topics)]


async def test_a_command_the_broker_refuses_waits_and_is_not_committed_past(
    bootstrap: str, topic_prefix: str
) -> None:
    outbox = f"{topic_prefix}.outbox"
    notifications, reviews = f"{topic_prefix}.notifications", f"{topic_prefix}.reviews"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(outbox, 1, 1), NewTopic(notifications, 1, 1),
                                   NewTopic(reviews, 1, 1, topic_configs={"max.message.bytes": "1000"})])
    finally:
        await admin.close()

    app_id = f"{topic_prefix}-{uuid.uuid4().hex[:6]}"
    publisher = Publisher(bootstrap=bootstrap, app_id=app_id, outbox=outbox,
                          outputs={"notifications": notifications, "reviews": reviews}, partitions=1)
    first = orjson.dumps({"notification_id": "ntf_before", "ucc": "ucc_A"})
    case = orjson.dumps({"case_id": "case_large", "ucc": "ucc_A", "details": "x" * 2000})
    last = orjson.dumps({"notification_id": "ntf_after", "ucc": "ucc_A"})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value, dest in ((first, b"notifications"), (case, b"reviews"), (last, b"notifications")):
            await producer.send_and_wait(outbox, value, key=b"ucc_A", partition=0, headers=[(H_DEST, dest)])
    finally:
        await producer.stop()

    seen = Warnings()
    logging.getLogger("refstream.worker.publisher").addHandler(seen)
    running = asyncio.create_task(publisher.run())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async def outbox_position() -> int | None:
            try:
                committed = await admin.list_consumer_group_offsets(f"{app_id}-publisher")
            except GroupCoordinatorNotAvailableError:
                return None  # the group has not committed anything yet
            meta = committed.get(TopicPartition(outbox, 0))
            return None if meta is None else int(meta.offset)

        async def refused_or_committed() -> bool:
            assert not running.done(), running
            return any("MessageSizeTooLarge" in e for e in seen.errors) or await outbox_position() is not None

        await until("the publisher to meet the broker's refusal", refused_or_committed, 60, every_s=0.1)
        position = await outbox_position()
        assert position is None, (
            f"the outbox was committed to {position}, past a command the broker refused: "
            f"out are only {await read_committed(bootstrap, [notifications, reviews])}")
        # nothing of the refused command's transaction is out
        assert await read_committed(bootstrap, [notifications, reviews]) == []
        # the operator raises the topic's limit: the next attempt goes through
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, reviews,
                                                  configs={"max.message.bytes": "1048576"})])

        async def all_out() -> list[bytes] | None:
            assert not running.done(), running
            got = await read_committed(bootstrap, [notifications, reviews])
            return got if len(got) >= 3 else None

        got = await until("every command of the partition to come out", all_out, 60)
        assert sorted(got) == sorted([first, case, last])
        async def past_all() -> bool:
            return await outbox_position() == 3

        await until("the outbox position to pass the three commands", past_all, 30)
    finally:
        await admin.close()
        logging.getLogger("refstream.worker.publisher").removeHandler(seen)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
