"""The local broker the whole suite stands on: real Kafka, answering requests."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from refstream import localkafka
from tests.conftest import Broker


async def test_broker_round_trips_a_record(bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.smoke"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    await producer.send_and_wait(topic, b"hello", key=b"k")
    await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        msg = await consumer.getone()
    finally:
        await consumer.stop()
    assert (msg.key, msg.value) == (b"k", b"hello")


def test_up_twice_is_harmless_and_port_in_use_is_named(kafka_broker: Broker, tmp_path) -> None:
    if kafka_broker.cluster is None:
        pytest.skip("the session uses an external broker; nothing of ours to start twice")
    cluster = kafka_broker.cluster
    assert localkafka.up(cluster) == cluster.bootstrap  # already running: returns at once
    other = localkafka.Cluster(tmp_path / "other", port=cluster.port)
    with pytest.raises(localkafka.KafkaError, match=f"Port {cluster.port} .* in use"):
        localkafka.up(other)
    assert localkafka.down(tmp_path / "other") == []  # stops nothing it did not start
