"""Shared fixtures: one real Kafka broker per test session, fresh topics per test, signing.

The broker is the project's own `refstream kafka up` machinery on a free port and a
temporary data dir, unless REFSTREAM_KAFKA_BOOTSTRAP points at a running one.

`make test` runs the suite in two processes (pytest-xdist, docs/testing.md): the first of
them that needs the broker starts it, the other uses the same one, and the controlling
process stops it at the end; the reliability table of tests/faults/ is gathered from both.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import random
import shutil
import tempfile
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
def kafka_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    external = os.environ.get("REFSTREAM_KAFKA_BOOTSTRAP")
    if external:
        yield Broker(external, None)
        return
    shared = getattr(request.config, "workerinput", {}).get(SHARED_KAFKA)
    if shared:  # an xdist worker: the controller stops the broker (pytest_unconfigure)
        yield _shared_broker(Path(shared))
        return
    cluster = localkafka.Cluster(tmp_path_factory.mktemp("kafka"), port=_free_port_pair())
    localkafka.up(cluster)
    try:
        yield Broker(cluster.bootstrap, cluster)
    finally:
        localkafka.down(cluster.data_dir)


def _shared_broker(folder: Path) -> Broker:
    """The broker all xdist workers share: started by the first that asks, under a lock."""
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = folder / "broker.json"
        if not started.exists():
            cluster = localkafka.Cluster(folder / "kafka", port=_free_port_pair())
            localkafka.up(cluster)
            started.write_text(json.dumps({"port": cluster.port}))
        port = json.loads(started.read_text())["port"]
    cluster = localkafka.Cluster(folder / "kafka", port=port)
    return Broker(cluster.bootstrap, cluster)


# --- the controlling process of an xdist run (`make test`) -----------------------------------

SHARED_KAFKA = "refstream_shared_kafka"
_shared_dir = pytest.StashKey[Path]()
_reliability_rows = pytest.StashKey[dict[str, Any]]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Before each worker starts: the folder of the broker they share. The broker jars are
    resolved here once (on a fresh checkout Maven fetches them), not by two workers at once."""
    config = node.config
    if _shared_dir not in config.stash:
        config.stash[_shared_dir] = Path(tempfile.mkdtemp(prefix="refstream-tests-kafka-"))
        with contextlib.suppress(localkafka.KafkaError):  # no Maven or Java: the tests say so
            localkafka.resolve_jars()
    node.workerinput[SHARED_KAFKA] = str(config.stash[_shared_dir])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker: which tests share an `xdist_group`, for the controller's scheduler."""
    shared = getattr(config, "workerinput", {}).get(SHARED_KAFKA)
    if shared and getattr(config.option, "loadgroup", False):
        groups = {item.nodeid: str(mark.args[0]) for item in items
                  if (mark := item.get_closest_marker("xdist_group")) is not None}
        written = Path(shared) / f"groups-{os.getpid()}.json"
        written.write_text(json.dumps(groups))
        written.replace(Path(shared) / "groups.json")  # every worker writes the same


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # ahead of xdist's own
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` as xdist documents it: tests of one `xdist_group` go to one worker,
    every other test to whichever worker is free. xdist 3.8 reads the groups from node ids,
    which pytest 9 no longer lets a plugin change, so the workers write them to a file."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    folder = config.stash[_shared_dir]

    class ByGroup(LoadScopeScheduling):  # type: ignore[misc]
        groups: dict[str, str] = {}  # noqa: RUF012 - replaced once, before scheduling

        def schedule(self) -> None:
            found = folder / "groups.json"
            self.groups = json.loads(found.read_text()) if found.exists() else {}
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            return self.groups.get(nodeid, nodeid)

    return ByGroup(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """A worker is done: keep the rows it added to the reliability table."""
    rows = getattr(node, "workeroutput", {}).get("reliability")
    if rows:
        node.config.stash.setdefault(_reliability_rows, {}).update(rows)


def pytest_sessionfinish(session: pytest.Session) -> None:
    rows = session.config.stash.get(_reliability_rows, None)
    if rows:
        from tests.faults.conftest import write_report

        write_report(rows)


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_shared_dir, None)
    if folder is not None:
        localkafka.down(folder / "kafka")
        shutil.rmtree(folder, ignore_errors=True)


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
