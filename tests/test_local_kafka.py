"""The local broker the whole suite stands on: real Kafka, answering requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def _refstream(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REFSTREAM_DATA_DIR": str(env_dir)}
    return subprocess.run([str(Path(sys.executable).parent / "refstream"), "kafka", *args], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_second_up_says_the_broker_runs_and_leaves_it_alone(kafka_broker: Broker, tmp_path: Path) -> None:
    if kafka_broker.cluster is None:
        pytest.skip("the session uses an external broker; nothing of ours to start twice")
    cluster = kafka_broker.cluster
    (pid,) = localkafka.running(cluster).values()
    where = ["--port", str(cluster.port), "--data-dir", str(cluster.data_dir)]

    detached = _refstream("up", "--detach", *where, env_dir=tmp_path)
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout.startswith(f"Kafka is already running at 127.0.0.1:{cluster.port} (pid {pid}, ")
    assert "left as it is" in detached.stdout and "is ready" not in detached.stdout

    # a foreground `up` returns at once instead of adopting the broker (it used to wait for
    # Ctrl-C and then stop a broker it had not started)
    foreground = _refstream("up", *where, env_dir=tmp_path)
    assert foreground.returncode == 0, foreground.stderr
    assert "already running" in foreground.stdout and "will not stop it" in foreground.stdout

    # the same data dir on another port: named, and the running broker is not touched
    elsewhere = _refstream("up", "--detach", "--port", str(cluster.port + 2),
                           "--data-dir", str(cluster.data_dir), env_dir=tmp_path)
    assert elsewhere.returncode == 1
    assert f"already runs on port {cluster.port}, not {cluster.port + 2}" in elsewhere.stderr

    # another data dir on the same port: names the broker that holds it
    other = _refstream("up", "--detach", "--port", str(cluster.port), "--data-dir", str(tmp_path / "other"),
                       env_dir=tmp_path)
    assert other.returncode == 1
    assert f"in use by another refstream broker (pid {pid}, data dir {cluster.data_dir})" in other.stderr

    assert localkafka.running(cluster) == {1: pid}  # still the same process, still answering
    assert localkafka.up(cluster) == cluster.bootstrap
