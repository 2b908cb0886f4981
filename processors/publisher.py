"""The dedupe stage before the output topics: outbox → payouts/notifications/reviews/review-cases.

The referrer stage writes every output record (docs/cli.md#output-records) to an internal
outbox topic (key = ucc), at least once. This publisher copies the outbox to the output topics with Kafka
transactions of its own (aiokafka, not Faust's): one transactional producer per outbox
partition (`<app id>-publisher-<p>`, so a restarted or new owner fences the old one and
aborts its open transaction), and each transaction holds the output records *and* the
outbox offset. Records whose id (payout_id / notification_id / case_state_id / case_id) already sits in
that partition of the output topics are dropped; the ids are read back, read_committed,
when the partition is assigned. So a read_committed consumer of the output topics sees
each command exactly once, whatever the workers upstream replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import RecordMetadata

from processors import windows
from processors.delivery import H_DEST, header

log = logging.getLogger("refstream.worker.publisher")

TRANSACTION_TIMEOUT_S = 30.0  # a transaction that has not committed by then is given up and redone
COLLECT_MAX = 10_000  # records per round at most
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0  # back-off when a partition cannot be taken over


def command_id(value: bytes) -> str:
    doc = orjson.loads(value)
    for name in ("payout_id", "notification_id", "case_state_id", "case_id"):  # a case state has both
        if name in doc:
            return str(doc[name])
    raise ValueError("not an output record: no payout_id, notification_id, case_state_id or case_id")


class Publisher(ConsumerRebalanceListener):
    def __init__(
        self, *, bootstrap: str, app_id: str, outbox: str, outputs: dict[str, str], partitions: int
    ) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.group_id = f"{app_id}-publisher"
        self.outbox = outbox
        self.outputs = outputs  # dest name → topic
        self.partitions = partitions
        self.producers: dict[int, AIOKafkaProducer] = {}
        self.seen: dict[int, set[str]] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.published = 0
        self.dropped = 0
        self.adopt_failures = 0  # partitions that could not be taken over at the first try
        self.window = windows.QUIET_S  # how long the next round gathers (windows.next_window)
        self.retrying: dict[int, asyncio.Task[None]] = {}
        # a rebalance waits for the transaction in flight: stopping its producer midway
        # would leave the commit waiting forever
        self.lock = asyncio.Lock()

    # --- rebalance ------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.lock:
            await asyncio.gather(*(self._drop(tp.partition) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self.lock:
            # in parallel: the group waits for this callback, and each adoption costs a
            # round trip to the transaction coordinator and a read of the output topics
            await asyncio.gather(*(self._adopt_or_retry(tp.partition) for tp in assigned
                                   if tp.partition not in self.producers))

    async def _adopt_or_retry(self, p: int) -> None:
        """Take over partition p; if that fails, keep trying in the background. A partition
        without its producer holds its commands back (nothing is lost: its outbox position
        is put back), and the group would not hand it out again until the next rebalance."""
        try:
            await self._adopt(p)
        except Exception as exc:
            self._adoption_failed(p, exc)
            if p not in self.retrying:
                self.retrying[p] = asyncio.get_running_loop().create_task(self._retry_adopt(p))

    async def _retry_adopt(self, p: int) -> None:
        delay = RETRY_FIRST_S
        try:
            while True:
                await asyncio.sleep(delay)  # back-off between attempts, not a wait for an event
                delay = min(delay * 2, RETRY_MAX_S)
                async with self.lock:
                    if p in self.producers or not self._assigned(p):
                        return  # taken over meanwhile, or no longer ours
                    try:
                        await self._adopt(p)
                        return
                    except Exception as exc:
                        self._adoption_failed(p, exc)
        finally:
            self.retrying.pop(p, None)

    def _adoption_failed(self, p: int, exc: Exception) -> None:
        self.adopt_failures += 1
        log.error("publisher could not take over an outbox partition; its commands wait, retrying",
                  extra={"partition": p, "error": repr(exc)})

    def _assigned(self, p: int) -> bool:
        return self.consumer is not None and TopicPartition(self.outbox, p) in self.consumer.assignment()

    async def _adopt(self, p: int) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=f"{self.app_id}-publisher-{p}",
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
        )
        try:
            await producer.start()  # init_transactions: fences and aborts a previous owner's transaction
            self.seen[p] = await self._published_ids(p)
        except BaseException:
            self.seen.pop(p, None)
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self.producers[p] = producer  # last: only now may records of p be copied
        log.info("publisher partition assigned", extra={"partition": p, "known_ids": len(self.seen[p])})

    async def _drop(self, p: int) -> None:
        producer = self.producers.pop(p, None)
        self.seen.pop(p, None)
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await producer.stop()

    async def _published_ids(self, p: int) -> set[str]:
        """The ids already committed in partition p of the output topics."""
        ids: set[str] = set()
        tps = [TopicPartition(t, p) for t in self.outputs.values()]
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            group_id=None,
        )
        await reader.start()
        try:
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            deadline = time.monotonic() + 60.0
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending and time.monotonic() < deadline:
                batch = await reader.getmany(*pending, timeout_ms=200, max_records=5000)
                for msgs in batch.values():
                    for m in msgs:
                        if m.value is not None:
                            ids.add(command_id(m.value))
                for tp in list(pending):
                    # aborted records and transaction markers also move the position
                    if await reader.position(tp) >= ends[tp]:
                        pending.discard(tp)
            if pending:
                raise RuntimeError(f"could not read the output topics up to their end: {pending}")
        finally:
            await reader.stop()
        return ids

    # --- the copy loop ----------------------------------------------------------------------

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            max_poll_records=2000,
            fetch_max_wait_ms=windows.FETCH_MAX_WAIT_MS,
            fetch_min_bytes=windows.FETCH_MIN_BYTES,
        )
        self.consumer = consumer
        await consumer.start()
        consumer.subscribe([self.outbox], listener=self)
        try:
            while True:
                batch = await self._collect(consumer)
                if batch:
                    async with self.lock:
                        # partitions have their own producers and transactions: in parallel
                        await asyncio.gather(*(self._publish(consumer, tp, msgs)
                                               for tp, msgs in batch.items() if msgs))
        finally:
            for task in list(self.retrying.values()):
                task.cancel()
            for p in list(self.producers):
                await self._drop(p)
            await consumer.stop()

    async def _collect(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list]:  # type: ignore[type-arg]
        """What the outbox holds, gathered for up to `self.window` after the first record: each
        transaction costs the broker and us five requests and a marker per partition, so
        one per partition per window instead of one per fetch (which returns a few records
        under a steady flow)."""
        batch = await consumer.getmany(timeout_ms=50, max_records=COLLECT_MAX)
        if not batch:
            return batch
        deadline = time.monotonic() + self.window
        count = sum(len(msgs) for msgs in batch.values())
        while count < COLLECT_MAX and (left := deadline - time.monotonic()) > 0:
            more = await consumer.getmany(timeout_ms=int(left * 1000) + 1, max_records=COLLECT_MAX - count)
            for tp, msgs in more.items():
                batch.setdefault(tp, []).extend(msgs)
                count += len(msgs)
        self.window = windows.next_window(count)
        return batch

    async def _publish(self, consumer: AIOKafkaConsumer, tp: TopicPartition, msgs: list) -> None:  # type: ignore[type-arg]
        producer = self.producers.get(tp.partition)
        if producer is None:
            # not (or no longer) ours to copy: put the position back so nothing is skipped
            with contextlib.suppress(Exception):
                consumer.seek(tp, msgs[0].offset)
            return
        seen = self.seen[tp.partition]
        fresh: list[str] = []
        try:
            await asyncio.wait_for(self._transaction(producer, tp, msgs, seen, fresh), TRANSACTION_TIMEOUT_S)
        except ProducerFenced:
            log.warning("publisher fenced: another worker owns the partition now",
                        extra={"partition": tp.partition})
            await self._drop(tp.partition)
            return
        except (KafkaError, TimeoutError) as exc:
            # the transaction did not commit: a new producer for the partition aborts it,
            # and the records are copied again from the first one
            log.warning("publish transaction failed; retrying", extra={"partition": tp.partition,
                                                                        "error": repr(exc)})
            await asyncio.sleep(0.2)
            await self._drop(tp.partition)
            await self._adopt_or_retry(tp.partition)
            with contextlib.suppress(Exception):
                consumer.seek(tp, msgs[0].offset)
            return
        seen.update(fresh)
        self.published += len(fresh)

    async def _transaction(
        self, producer: AIOKafkaProducer, tp: TopicPartition, msgs: list, seen: set[str],  # type: ignore[type-arg]
        fresh: list[str],
    ) -> None:
        async with producer.transaction():
            sends: list[asyncio.Future[RecordMetadata]] = []
            for m in msgs:
                dest = header(m.headers, H_DEST)
                topic = self.outputs.get(dest.decode()) if dest else None
                if topic is None or m.value is None:
                    log.error("outbox record without a known destination", extra={"offset": m.offset})
                    continue
                cid = command_id(m.value)
                if cid in seen or cid in fresh:
                    self.dropped += 1
                    continue
                fresh.append(cid)
                sends.append(await producer.send(topic, m.value, key=m.key, partition=tp.partition))
            await producer.send_offsets_to_transaction({tp: msgs[-1].offset + 1}, self.group_id)
            # aiokafka commits a transaction whose records the broker refused (it only waits
            # for the sends to finish, not to succeed): the outbox offset would be committed
            # without them. A refused send raises here, and the transaction is aborted.
            await asyncio.gather(*sends)
