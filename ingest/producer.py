"""The one way ingest writes: an idempotent `acks=all` producer with a bounded wait.

`EventLog.append` returns only once every in-sync replica has the record, or raises
`LogUnavailable` within `timeout_s` — ingest then answers 503 and Stripe retries. It never
reports success for a record Kafka did not confirm.

Ingest must start (and answer /healthz, and 503 on webhooks) while Kafka is down, so the
producer is started lazily and restarted after a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.metadata import MetadataRequest

MAX_BATCH_BYTES = 512 * 1024


class KeyPartitioner:
    """aiokafka's default partitioner (the Java client's murmur2, so every producer puts a
    customer on the same partition), remembered per key: murmur2 is pure Python (~7 µs a
    call) and the same customers come back again and again."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._default = DefaultPartitioner()
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (partition count, index)

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        count = len(all_partitions)
        known = self._index.get(key)
        if known is None or known[0] != count:
            partition = int(self._default(key, all_partitions, available))
            if len(self._index) >= self.MAX_KEYS:
                self._index.clear()
            self._index[key] = (count, all_partitions.index(partition))
            return partition
        return all_partitions[known[1]]


@dataclass(slots=True)
class _Deadline:
    at: float
    task: asyncio.Task[object] | None
    cancelling: int  # the task's cancel requests before this deadline began
    expired: bool = False


class _Deadlines:
    """One timer for every append in flight instead of one each.

    `asyncio.timeout` arms and cancels a loop timer per use (~9 µs). All appends share one
    timeout, so their deadlines arrive in order: a FIFO swept every SWEEP_S finds the
    expired ones at its front and cancels their tasks, as asyncio.timeout would. A
    deadline fires at most SWEEP_S late.
    """

    SWEEP_S = 0.05

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._queue: deque[_Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> _Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        deadline = _Deadline(loop.time() + self.timeout_s, task, task.cancelling() if task else 0)
        self._queue.append(deadline)
        if self._timer is None or self._timer_loop is not loop:  # (a loop closed with its timer)
            self._timer = loop.call_later(self.SWEEP_S, self._sweep, loop)
            self._timer_loop = loop
        return deadline

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        queue = self._queue
        while queue and (queue[0].task is None or queue[0].at <= now):
            deadline = queue.popleft()
            task = deadline.task
            if task is not None and task.get_loop() is loop:
                deadline.expired = True
                task.cancel()
        if queue:
            self._timer = loop.call_later(self.SWEEP_S, self._sweep, loop)


@dataclass(slots=True)
class _OpenBatch:
    builder: BatchBuilder
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    due: bool = False  # its linger is over; it goes as soon as the partition has nothing in flight


class _Batcher:
    """Records gathered into one aiokafka batch per partition, handed over whole.

    `producer.send()` costs a coroutine, a partition lookup (two sets and a sort), an
    accumulator call, a future and a RecordMetadata per record. Here a record is one
    C-level append to the partition's open batch and one future; the batch goes to the
    producer with `send_batch` (the same accumulator, sender, retries and idempotent
    sequence numbers) once its linger is over and the partition's previous batch is
    confirmed, so batches grow while a request is in flight, as aiokafka's own do.
    Every waiter learns its batch's outcome: confirmed by Kafka, or the error.
    """

    def __init__(self, producer: AIOKafkaProducer, linger_s: float) -> None:
        self._producer = producer
        self._linger_s = linger_s
        self._partitioner = KeyPartitioner()
        self._partitions: dict[str, tuple[float, list[int]]] = {}  # topic -> (seen at, sorted ids)
        self._open: dict[tuple[str, int], _OpenBatch] = {}
        self._in_flight: dict[tuple[str, int], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._linger_timer: asyncio.TimerHandle | None = None

    async def partitions(self, topic: str, ttl_s: float) -> list[int]:
        known = self._partitions.get(topic)
        if known is not None and time.monotonic() - known[0] < ttl_s:
            return known[1]
        ids = sorted(await self._producer.partitions_for(topic))
        self._partitions[topic] = (time.monotonic(), ids)
        return ids

    def add(self, topic: str, partitions: list[int], key: bytes, value: bytes,
            headers: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]:
        """Append one record; the future is done once Kafka confirmed its batch."""
        tp = (topic, self._partitioner(key, partitions, partitions))
        batch = self._open.get(tp)
        if batch is None:
            batch = self._start(tp)
        if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            # full: send it now, and start another
            self._hand_over(tp, batch)
            batch = self._start(tp)
            if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                raise LogUnavailable(
                    "kafka_error",
                    f"The event ({len(value)} bytes) does not fit in one Kafka batch, so it was "
                    "not stored. Lower REFSTREAM_MAX_BODY_BYTES so such bodies get 413.",
                )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        return waiter

    def _start(self, tp: tuple[str, int]) -> _OpenBatch:
        batch = self._open[tp] = _OpenBatch(self._producer.create_batch())
        if self._linger_timer is None:
            self._linger_timer = asyncio.get_running_loop().call_later(self._linger_s, self._lingered)
        return batch

    def _lingered(self) -> None:
        # One linger for all partitions, not one per batch: the batches handed over
        # together leave in one produce request. With a timer per batch, at a few hundred
        # webhooks a second (a record or two per partition and linger) nearly every
        # webhook went to the broker in a request of its own.
        self._linger_timer = None
        for tp, batch in list(self._open.items()):
            if batch.due:
                continue
            if self._in_flight.get(tp):
                batch.due = True  # goes when the one in flight is confirmed
            else:
                self._hand_over(tp, batch)

    def _hand_over(self, tp: tuple[str, int], batch: _OpenBatch) -> None:
        if self._open.get(tp) is batch:
            del self._open[tp]
        batch.builder.close()  # closed: the accumulator sends it without lingering again
        self._in_flight[tp] = self._in_flight.get(tp, 0) + 1
        task = asyncio.get_running_loop().create_task(self._deliver(tp, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, tp: tuple[str, int], batch: _OpenBatch) -> None:
        try:
            delivered = await self._producer.send_batch(batch.builder, tp[0], partition=tp[1])
            await delivered
        except Exception as exc:
            for waiter in batch.waiters:
                if not waiter.done():
                    # a copy each, so tracebacks do not pile up on one object
                    waiter.set_exception(copy.copy(exc))
        except BaseException:  # cancelled (the loop is closing): nobody gets a 200
            for waiter in batch.waiters:
                waiter.cancel()
            raise
        else:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        finally:
            self._in_flight[tp] -= 1
            following = self._open.get(tp)
            if following is not None and following.due and not self._in_flight[tp]:
                self._hand_over(tp, following)

    async def close(self) -> None:
        """Send what is still open and wait until every batch is settled."""
        for tp, batch in list(self._open.items()):
            self._hand_over(tp, batch)
        if self._tasks:
            await asyncio.wait(list(self._tasks))


class LogUnavailable(Exception):
    """Kafka did not confirm the write in time; `code` and message name the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventLog:
    def __init__(
        self,
        bootstrap: str,
        *,
        timeout_s: float = 5.0,
        linger_ms: int = 2,
        topic_check_ttl_s: float = 30.0,
        client_id: str = "refstream-ingest",
    ) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._linger_ms = linger_ms
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._batcher: _Batcher | None = None
        self._start_lock = asyncio.Lock()
        # topics seen to exist, with the time they were seen: a deleted topic is noticed
        # within the TTL, and the hot path costs no metadata request
        self._known_topics: dict[str, float] = {}
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._topic_ttl = topic_check_ttl_s
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self._closed = False
        self._deadlines = _Deadlines(timeout_s)

    async def _ensure_started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._start_lock:
            if self._producer is not None:
                return self._producer
            if self._closed:
                raise LogUnavailable("shutting_down", "ingest is shutting down; Stripe will retry.")
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                # batches are gathered by _Batcher (with linger_ms) and handed over closed
                linger_ms=0,
                # aiokafka's default (16 KiB) holds only three ~5 KB events, so under load
                # every partition's batch filled at once and sends waited for it to drain:
                # many small produce requests, each costing the broker the same. Half of
                # the broker's default max.message.bytes (1 MiB) keeps a batch acceptable.
                max_batch_size=MAX_BATCH_BYTES,
                # a broker that stops answering is noticed well within our own bound's retries
                request_timeout_ms=max(int(self.timeout_s * 1000), 3000),
                metadata_max_age_ms=30_000,
            )
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._batcher = _Batcher(producer, self._linger_ms / 1000)
            self._producer = producer
            return producer

    async def _topic_exists(self, producer: AIOKafkaProducer, topic: str) -> bool:
        # one check in flight per topic, however many deliveries are waiting for it
        async with self._topic_locks.setdefault(topic, asyncio.Lock()):
            seen = self._known_topics.get(topic)
            if seen is not None and time.monotonic() - seen < self._topic_ttl:
                return True
            # allow_auto_topic_creation=False: on brokers with auto.create.topics.enable a
            # plain metadata request would create the log with default configs instead of
            # the ones `refstream topics create` gives it (retention forever, replication)
            client = producer.client
            node = client.get_random_node()
            if node is None:
                raise KafkaConnectionError("no broker known")
            response = await client.send(node, MetadataRequest([topic], allow_auto_topic_creation=False))
            exists = any(
                t["topic"] == topic and t["error_code"] == 0 and t["partitions"]
                for t in response.to_object()["topics"]
            )
            if exists:
                self._known_topics[topic] = time.monotonic()
            return exists

    async def append(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        deadline = self._deadlines.start()
        try:
            producer = self._producer or await self._ensure_started()
            batcher = self._batcher
            assert batcher is not None  # set together with the producer
            seen = self._known_topics.get(topic)
            stale = seen is None or time.monotonic() - seen >= self._topic_ttl
            if stale and not await self._topic_exists(producer, topic):
                raise LogUnavailable(
                    "topic_missing",
                    f"The Kafka topic {topic!r} does not exist, so the event could not be "
                    "stored. Create the topics with `refstream topics create`; Stripe "
                    "will retry this delivery.",
                )
            partitions = await batcher.partitions(topic, self._topic_ttl)
            await batcher.add(topic, partitions, key, value, headers)
        except asyncio.CancelledError:
            task = deadline.task
            if not deadline.expired or task is None or task.uncancel() > deadline.cancelling:
                raise  # cancelled by someone else (shutdown, a client gone), not our bound
            raise self._timed_out() from None
        except TimeoutError:
            raise self._timed_out() from None
        except (KafkaConnectionError, OSError):
            raise LogUnavailable(
                "kafka_unreachable",
                f"Kafka at {self.bootstrap} is not reachable, so the event was not "
                "acknowledged. Stripe will retry; start the broker (`refstream kafka up`) or "
                "fix REFSTREAM_KAFKA_BOOTSTRAP.",
            ) from None
        except KafkaError as exc:
            raise LogUnavailable(
                "kafka_error",
                f"Kafka refused the write ({type(exc).__name__}), so the event was not "
                f"acknowledged. Stripe will retry; check the brokers at {self.bootstrap}.",
            ) from None
        finally:
            deadline.task = None

    def _timed_out(self) -> LogUnavailable:
        return LogUnavailable(
            "kafka_timeout",
            f"Kafka did not confirm the write within {self.timeout_s:g} s, so the event "
            "was not acknowledged. Stripe will retry; check that the brokers at "
            f"{self.bootstrap} are up (`refstream kafka up`).",
        )

    async def reachable(self, *, timeout_s: float = 1.0, cache_s: float = 1.0) -> bool:
        """A cheap metadata round trip, cached briefly so probes cannot load the broker."""
        at, ok = self._ready_cache
        now = time.monotonic()
        if now - at < cache_s:
            return ok
        try:
            async with asyncio.timeout(timeout_s):
                producer = await self._ensure_started()
                await producer.client.fetch_all_metadata()
            ok = True
        except (TimeoutError, KafkaError, OSError, LogUnavailable):
            ok = False
        self._ready_cache = (time.monotonic(), ok)
        return ok

    async def stop(self) -> None:
        self._closed = True
        async with self._start_lock:
            producer, self._producer = self._producer, None
            batcher, self._batcher = self._batcher, None
        if producer is not None:
            # a stopped broker must not hold shutdown hostage: what is still open gets the
            # produce timeout to be sent, then the producer stops whatever happened
            bound = max(self.timeout_s, 1.0)
            if batcher is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(batcher.close(), timeout=bound)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=bound)
