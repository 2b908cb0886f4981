"""Shared fixtures: one real Kafka broker per test session, fresh topics per test, signing.

The broker is the project's own `refstream kafka up` machinery on a free port and a
temporary data dir, unless REFSTREAM_KAFKA_BOOTSTRAP points at a running one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refstream import localkafka
from schemas.topics import Topics

# The project's own Stripe payload samples of both API shapes, one object per file
# (tests/stripe_samples/README.md says what each one is for).
FIXTURES = Path(__file__).resolve().parent / "stripe_samples"


def _free_port_pair() -> int:
    # Kafka needs port (clients) and port+1 (controller); outside the ephemeral range so a
    # client socket cannot grab one between this check and the broker's start.
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000, 2)
        if localkafka._port_free(port) and localkafka._port_free(port + 1):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1 between 20000 and 30000")


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    cluster: localkafka.Cluster | None  # None when the broker is external


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    external = os.environ.get("REFSTREAM_KAFKA_BOOTSTRAP")
    if external:
        yield Broker(external, None)
        return
    cluster = localkafka.Cluster(tmp_path_factory.mktemp("kafka"), port=_free_port_pair())
    localkafka.up(cluster)
    try:
        yield Broker(cluster.bootstrap, cluster)
    finally:
        localkafka.down(cluster.data_dir)


@pytest.fixture
def bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so each test sees fresh, empty topics."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topics(topic_prefix: str) -> Topics:
    return Topics(env="sandbox", prefix=topic_prefix)


@pytest.fixture
def stack(bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Any]:
    """A private pipeline stack (tests/pipeline/stack.py): topics under the test's prefix,
    ingest and workers as processes, all stopped afterwards."""
    from tests.pipeline.stack import Stack  # only tests that start processes pay the import

    s = Stack(bootstrap, topic_prefix, tmp_path)
    s.create_topics()
    try:
        yield s
    finally:
        s.close()


def sign(body: bytes, secret: str, *, timestamp: int | None = None, scheme: str = "v1") -> str:
    """A `Stripe-Signature` header value, computed the way Stripe documents it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},{scheme}={mac}"
