"""The worker commits a partition only up to its first record the agents did not finish
(processors/handoff.py: install_commit_guard).

faust's own choice of the offset to commit counts "gaps" (offsets its drain loop never
read) as done, and has no check at the head of a partition with nothing committed; in a
handover that committed past a Signup no agent ever applied
(tests/pipeline/test_two_workers.py). These run faust's own `perform_seek` and the
worker's consumer over a fake consumer thread."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import Message

from processors.app import WorkerApp

A = TP("worker-referrer", 0)  # committed up to 5
B = TP("stripe-events", 1)  # nothing committed yet; its log starts at 2


@dataclass
class KafkaConsumer:
    starts: dict[TopicPartition, int]
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    to_beginning: list[TopicPartition] = field(default_factory=list)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.to_beginning.append(tp)
            self.positions[tp] = self.starts[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


@pytest.fixture
def app() -> Iterator[WorkerApp]:
    yield WorkerApp("commit-guard-test", broker="kafka://127.0.0.1:1")


def positioned(app: WorkerApp, committed: dict[TP, int | None], kafka: KafkaConsumer) -> Any:
    consumer = app.consumer
    thread = consumer._thread  # type: ignore[attr-defined]
    thread._ensure_consumer = lambda: kafka

    async def seek_to_committed() -> dict[TP, int | None]:
        return dict(committed)

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    thread.seek_to_committed = seek_to_committed
    thread.call_thread = call_thread
    return consumer


def message(tp: TP, offset: int) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, [], b"k", b"v", None, tp=tp)


def acked(consumer: Any, tp: TP, *offsets: int) -> None:
    for offset in offsets:
        consumer.ack(message(tp, offset))


async def test_a_commit_stops_at_the_first_record_no_stream_finished(app: WorkerApp) -> None:
    consumer = positioned(app, {A: 5}, KafkaConsumer({}))
    await consumer.perform_seek()  # faust's own, at the end of every recovery
    acked(consumer, A, 5, 6, 8)
    # the drain loop saw 8 right after 6 and recorded 7..8 as a gap (no record there)
    consumer._gap[A].addi(7, 9)
    assert consumer._new_offset(A) == 7, "7 was never finished: the commit must not pass it"
    assert consumer._new_offset(A) is None
    acked(consumer, A, 7)
    assert consumer._new_offset(A) == 9


async def test_a_partition_with_nothing_committed_starts_from_its_log_and_waits_for_its_first_record(
    app: WorkerApp,
) -> None:
    kafka = KafkaConsumer({TopicPartition(*B): 2})
    consumer = positioned(app, {A: 5, B: None}, kafka)
    await consumer.perform_seek()
    # aiokafka's seek to the committed offsets leaves B where it is: it is fetched again
    # from the start of its log, so records a rebalance dropped come again
    assert kafka.to_beginning == [TopicPartition(*B)]
    acked(consumer, B, 3, 4)
    assert consumer._new_offset(B) is None, "2 was never finished"
    acked(consumer, B, 2)
    assert consumer._new_offset(B) == 5


async def test_acks_made_before_a_revoke_still_count_at_its_commit(app: WorkerApp) -> None:
    consumer = positioned(app, {A: 5}, KafkaConsumer({}))
    await consumer.perform_seek()
    acked(consumer, A, 5, 6)
    # a rebalance revokes A: faust forgets its acks and its committed offset (as its
    # on_partitions_revoked does), then the batch in flight (7) is finished
    for bookkeeping in (consumer._acked, consumer._acked_index, consumer._committed_offset):
        bookkeeping.pop(A, None)
    acked(consumer, A, 7)
    assert consumer._new_offset(A) == 8


async def test_nothing_is_committed_before_the_recovery_positions_a_partition(app: WorkerApp) -> None:
    consumer = positioned(app, {}, KafkaConsumer({}))
    acked(consumer, A, 0, 1)
    assert consumer._new_offset(A) is None


async def test_faust_still_commits_past_a_record_it_counts_as_a_gap(app: WorkerApp) -> None:
    """What the guard makes up for. If faust stops doing this, revisit
    processors/handoff.py: install_commit_guard."""
    consumer = app.consumer
    consumer._committed_offset[A] = 5
    consumer._acked[A].extend([5, 6, 8])
    consumer._acked_index[A].update([5, 6, 8])
    consumer._gap[A].addi(7, 9)
    assert Consumer._new_offset(consumer, A) == 9
    # and asks the worker's choice through the names the guard replaces
    assert "self._new_offset(tp)" in inspect.getsource(Consumer._filter_committable_offsets)
    assert "await self.seek_to_committed()" in inspect.getsource(Consumer.perform_seek)
