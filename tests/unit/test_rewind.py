"""Records faust's consumer fetched and then dropped are fetched again
(processors/handoff.py: install_rewind).

These run faust's own `Consumer.getmany` (through the worker's patch) over a fake consumer
thread, so a faust upgrade that changes how a fetch is handed over, or stops dropping
records, fails here instead of losing webhooks in a handover
(tests/pipeline/test_two_workers.py is the pipeline-level check)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import Consumer
from faust.types import TP

from processors.app import WorkerApp

A = TP("stripe-events", 0)
B = TP("stripe-events", 1)


def records(tp: TP, offsets: range) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, b"k", b"v", None, 1, 1, [])
            for o in offsets]


@dataclass
class KafkaConsumer:
    """What the patch and faust's `getmany` use of aiokafka's consumer: its assignment,
    positions, seeks, and the high watermark faust reads for every record."""

    positions: dict[TopicPartition, int]
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return 100


@pytest.fixture
def app() -> Iterator[WorkerApp]:
    yield WorkerApp("rewind-test", broker="kafka://127.0.0.1:1")


def fake_thread(app: WorkerApp, kafka: KafkaConsumer, fetch: dict[TP, list[Any]]) -> Any:
    """The worker's consumer with its thread replaced: `fetch` is what the next fetch returns."""
    consumer = app.consumer
    thread = consumer._thread  # type: ignore[attr-defined]
    thread._ensure_consumer = lambda: kafka

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    thread.call_thread = call_thread

    async def getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        return {tp: recs for tp, recs in fetch.items() if tp in active_partitions}

    consumer._getmany = getmany  # type: ignore[attr-defined]
    consumer._active_partitions = {A, B}  # type: ignore[attr-defined]
    consumer.resume_flow()
    return consumer


async def handed_over(consumer: Any, *, after_first: Any = None) -> list[tuple[TP, int]]:
    got = []
    async for tp, message in consumer.getmany(timeout=1.0):
        got.append((tp, message.offset))
        if after_first is not None and len(got) == 1:
            after_first()
    return got


async def test_a_partition_paused_while_its_fetch_is_handed_over_is_fetched_again(app: WorkerApp) -> None:
    # the consumer thread returned B's first records because B was active then; faust
    # pauses B (a rebalance's recovery) before they are handed over and drops them
    kafka = KafkaConsumer({TopicPartition(*A): 3, TopicPartition(*B): 5})
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3)), B: records(B, range(0, 5))})
    got = await handed_over(consumer, after_first=lambda: consumer.pause_partitions({B}))
    assert got == [(A, 0), (A, 1), (A, 2)]
    assert kafka.seeks == [(TopicPartition(*B), 0)], "B's dropped records would never be fetched again"


async def test_a_fetch_cut_short_by_a_stopped_flow_is_fetched_again_from_the_first_dropped(
    app: WorkerApp,
) -> None:
    kafka = KafkaConsumer({TopicPartition(*A): 3})
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3))})
    got = await handed_over(consumer, after_first=consumer.stop_flow)
    assert got == [(A, 0)]
    assert kafka.seeks == [(TopicPartition(*A), 1)]


async def test_a_partition_already_put_back_further_is_left_alone(app: WorkerApp) -> None:
    # e.g. faust sought it to its committed offset meanwhile: moving it forward would skip
    kafka = KafkaConsumer({TopicPartition(*A): 3, TopicPartition(*B): 0})
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3)), B: records(B, range(2, 5))})
    got = await handed_over(consumer, after_first=lambda: consumer.pause_partitions({B}))
    assert got == [(A, 0), (A, 1), (A, 2)]
    assert kafka.seeks == []


async def test_a_revoked_partition_is_left_to_its_next_owner(app: WorkerApp) -> None:
    kafka = KafkaConsumer({TopicPartition(*A): 3})  # B is no longer assigned here
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3)), B: records(B, range(0, 5))})
    got = await handed_over(consumer, after_first=lambda: consumer.pause_partitions({B}))
    assert got == [(A, 0), (A, 1), (A, 2)]
    assert kafka.seeks == []


async def test_a_table_changelog_is_left_to_the_recovery(app: WorkerApp) -> None:
    # faust pauses changelogs once a table is recovered, and seeks them itself when it
    # recovers again; what a fetch brought of them after that is not needed
    changelog = app.Table("referrers", partitions=2).changelog_topic.get_topic_name()
    c = TP(changelog, 1)
    kafka = KafkaConsumer({TopicPartition(*A): 3, TopicPartition(*c): 4})
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3)), c: records(c, range(0, 4))})
    consumer._active_partitions = {A, c}
    got = await handed_over(consumer, after_first=lambda: consumer.pause_partitions({c}))
    assert got == [(A, 0), (A, 1), (A, 2)]
    assert kafka.seeks == []


async def test_a_fetch_handed_over_whole_moves_nothing(app: WorkerApp) -> None:
    kafka = KafkaConsumer({TopicPartition(*A): 3, TopicPartition(*B): 2})
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3)), B: records(B, range(0, 2))})
    got = await handed_over(consumer)
    assert sorted(got) == [(A, 0), (A, 1), (A, 2), (B, 0), (B, 1)]
    assert kafka.seeks == []


async def test_faust_still_drops_the_records_of_a_paused_partition(app: WorkerApp) -> None:
    """What the patch makes up for. If faust stops dropping them, or hands fetches over
    another way, revisit processors/handoff.py: install_rewind."""
    kafka = KafkaConsumer({TopicPartition(*A): 3, TopicPartition(*B): 5})
    consumer = fake_thread(app, kafka, {A: records(A, range(0, 3)), B: records(B, range(0, 5))})
    got = []
    async for tp, message in Consumer.getmany(consumer, timeout=1.0):
        got.append((tp, message.offset))
        if len(got) == 1:
            consumer.pause_partitions({B})
    assert got == [(A, 0), (A, 1), (A, 2)]
    # the drain loop takes records from `self.getmany` (the patch), and faust's getmany
    # fetches through `self._wait_next_records` (which the patch watches)
    assert "getmany = self.getmany" in inspect.getsource(Consumer._drain_messages)
    assert "self._wait_next_records(" in inspect.getsource(Consumer.getmany)
