"""`refstream deliver`: the output topics POSTed to the operator's endpoint (docs/cli.md#deliver).

Reads `refstream.notifications|payouts|reviews.<env>` with read_committed in its own
consumer group (`<app id>-deliver`) and POSTs each record, signed the way Stripe signs its
webhooks, to `REFSTREAM_DELIVERY_URL`:

    Refstream-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">[,v1=… one per secret]
    Idempotency-Key: <the record's id>
    body: {"id": <the record's id>, "type": "notification"|"payout"|"review_case",
           "env": <env>, "data": <the record as on the topic>}

**At least once, in order per referrer.** Records are queued per referrer (the topics'
key): a referrer's records go out one after the other, in the order read, while other
referrers' go out meanwhile. A 2xx answer delivers a record; anything else (another status,
no answer within the timeout, a refused connection) is retried after an exponentially
growing, jittered pause, until the record is older than the maximum age (counted from
when it was written to its topic, so a restart does not reset it). Then it goes to
`refstream.delivery-dead-letters.<env>` with the last error, and the referrer's next
record follows.

**The position.** Per topic partition, the committed offset only ever moves past records
that were delivered or whose dead letter the broker acknowledged. A crash (kill -9
included) resumes from there: records after it may be delivered again, with the same
`Idempotency-Key` and the same body, so a receiver drops duplicates by id; none is lost.
The three topics are assigned by partition number (range assignor), so every record of a
referrer is read by the same deliverer, also with several of them in the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from schemas.topics import Topics

log = logging.getLogger("refstream.deliver")

SIGNATURE_HEADER = "Refstream-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_MAX_AGE_S = 3 * 24 * 3600
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_FIRST_S = 1.0
DEFAULT_RETRY_MAX_S = 3600.0
DEFAULT_CONCURRENCY = 16
MAX_IN_FLIGHT = 10_000  # records read and not yet delivered: past this, reading pauses
COMMIT_EVERY_S = 0.5
RECENT_ERRORS = 20

# the record kinds, by output topic
NOTIFICATION, PAYOUT, REVIEW_CASE = "notification", "payout", "review_case"
_ID_FIELDS = {NOTIFICATION: "notification_id", PAYOUT: "payout_id", REVIEW_CASE: "case_id"}


def sign(body: bytes, secrets: Iterable[str], timestamp: int) -> str:
    """The `Refstream-Signature` value: Stripe's scheme, one `v1` per secret (newest first),
    so a receiver still holding the previous secret verifies during a rotation."""
    signed = f"{timestamp}.".encode() + body
    sigs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={sig}" for sig in sigs)])


def body_of(kind: str, env: str, value: bytes) -> tuple[str, bytes]:
    """(the record's id, the body POSTed for it). The same record always gives the same bytes.
    Raises ValueError for a value that is not an output record."""
    doc = orjson.loads(value)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    rid = doc.get(_ID_FIELDS[kind])
    if not isinstance(rid, str) or not rid:
        raise ValueError(f"no {_ID_FIELDS[kind]}")
    body = orjson.dumps({"id": rid, "type": kind, "env": env, "data": doc}, option=orjson.OPT_SORT_KEYS)
    return rid, body


def backoff(attempt: int, first_s: float, max_s: float, rng: Callable[[], float] = random.random) -> float:
    """The pause after the `attempt`-th failure (1, 2, …): it doubles from `first_s` up to
    `max_s`, and is drawn between half and all of that, so many records that failed
    together do not all come back at once."""
    ceiling = min(max_s, first_s * 2 ** min(attempt - 1, 60))
    return float(ceiling / 2 + rng() * ceiling / 2)


def redacted(url: str) -> str:
    """The endpoint as logs and `/status` show it: no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    url: str
    secrets: tuple[str, ...]  # newest first
    topics: Topics
    max_age_s: float = DEFAULT_MAX_AGE_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_first_s: float = DEFAULT_RETRY_FIRST_S
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    concurrency: int = DEFAULT_CONCURRENCY
    session_timeout_s: float = 10.0  # how soon the group notices a member that died (kill -9)

    @property
    def group_id(self) -> str:
        return f"{self.topics.prefix}-{self.topics.env}-deliver"

    @property
    def kinds(self) -> dict[str, str]:
        t = self.topics
        return {t.notifications: NOTIFICATION, t.payouts: PAYOUT, t.reviews: REVIEW_CASE}


@dataclass
class Item:
    """One record read: where it sits, and what became of it so far."""

    topic: str
    partition: int
    offset: int
    ucc: str
    value: bytes
    written_at: float  # the record's Kafka timestamp, seconds
    attempts: int = 0
    last_error: str = ""
    first_attempt_at: float = 0.0
    next_attempt_at: float = 0.0
    record_id: str = ""


@dataclass
class _Partition:
    """Offsets read and not yet committed, in order; True once delivered or dead-lettered."""

    offsets: dict[int, bool] = field(default_factory=dict)
    next_offset: int | None = None  # one past the last offset read
    committed: int | None = None

    def done_up_to(self) -> int | None:
        """The offset to commit: the first not done, or one past the last read."""
        for off, done in self.offsets.items():
            if not done:
                return off
        return self.next_offset


@dataclass
class Stats:
    delivered: dict[str, int] = field(default_factory=dict)  # per kind
    retried: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    recent_errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))


class Deliverer:
    """One deliverer of one environment (one member of the group `<app id>-deliver`)."""

    def __init__(self, cfg: DeliveryConfig, bootstrap: str, *, now: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.now = now
        self.stats = Stats()
        self.parts: dict[tuple[str, int], _Partition] = {}
        self.lanes: dict[str, deque[Item]] = {}
        self.lane_tasks: dict[str, asyncio.Task[None]] = {}
        self.highwater: dict[tuple[str, int], int] = {}
        self.in_flight = 0
        self.paused = False
        self.ready = asyncio.Event()  # set once the group has assigned partitions
        self.stopping = asyncio.Event()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._consumer: Any = None
        self._producer: Any = None
        self._http: Any = None

    # --- what /metrics and /status show ----------------------------------------------------

    def lag(self) -> dict[str, int]:
        """Per topic: records not yet delivered or dead-lettered (end offset − done position)."""
        out: dict[str, int] = {}
        for (topic, p), part in self.parts.items():
            end = self.highwater.get((topic, p))
            pos = part.done_up_to()
            if end is None or pos is None:
                continue
            out[topic] = out.get(topic, 0) + max(0, end - pos)
        return out

    def retrying(self) -> list[dict[str, Any]]:
        out = []
        for lane in self.lanes.values():
            if lane and lane[0].attempts:
                it = lane[0]
                out.append({"id": it.record_id, "ucc": it.ucc, "topic": it.topic, "partition": it.partition,
                            "offset": it.offset, "attempts": it.attempts, "last_error": it.last_error,
                            "first_attempt_at": int(it.first_attempt_at),
                            "next_attempt_at": int(it.next_attempt_at),
                            "gives_up_at": int(it.written_at + self.cfg.max_age_s)})
        return sorted(out, key=lambda r: (r["first_attempt_at"], r["id"]))

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "env": self.cfg.topics.env, "url": redacted(self.cfg.url), "group": self.cfg.group_id,
            "ready": self.ready.is_set(), "lag": self.lag(),
            "delivered": sum(s.delivered.values()), "retried": sum(s.retried.values()),
            "dead_lettered": sum(s.dead_lettered.values()),
            "retrying": self.retrying(), "recent_errors": list(s.recent_errors),
        }

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.cfg
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=cfg.group_id, isolation_level="read_committed",
            enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,), max_poll_records=1000,
            session_timeout_ms=int(cfg.session_timeout_s * 1000),
            heartbeat_interval_ms=int(cfg.session_timeout_s * 1000 / 4),
        )
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                          enable_idempotence=True)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                                           connector=aiohttp.TCPConnector(limit=cfg.concurrency))
        try:
            await self._producer.start()
            await self._consumer.start()
            self._consumer.subscribe(list(cfg.kinds), listener=_Listener(self))
            await self._loop()
        finally:
            await self._shutdown()

    async def _loop(self) -> None:
        consumer = self._consumer
        last_commit = 0.0
        while not self.stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    self._take(tp.topic, tp.partition, m)
            for tp in consumer.assignment():
                key = (tp.topic, tp.partition)
                # read_committed: the end is the last stable offset, and the position moves past
                # transaction markers and aborted records, which are never handed out
                end = consumer.last_stable_offset(tp)
                if end is None:
                    end = consumer.highwater(tp)
                if end is not None:
                    self.highwater[key] = end
                part = self.parts.setdefault(key, _Partition())
                try:
                    pos = await consumer.position(tp)
                except KafkaError:  # being revoked right now
                    continue
                if part.next_offset is None or pos > part.next_offset:
                    part.next_offset = pos
            self._flow()
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                await self.commit()
                last_commit = time.monotonic()

    def _take(self, topic: str, partition: int, m: Any) -> None:
        part = self.parts.setdefault((topic, partition), _Partition())
        part.offsets[m.offset] = False
        part.next_offset = m.offset + 1
        ucc = m.key.decode(errors="replace") if m.key else ""
        item = Item(topic, partition, m.offset, ucc, m.value or b"", m.timestamp / 1000.0)
        self.in_flight += 1
        lane = self.lanes.get(ucc)
        if lane is None:
            lane = self.lanes[ucc] = deque()
        lane.append(item)
        if ucc not in self.lane_tasks:
            self.lane_tasks[ucc] = asyncio.get_running_loop().create_task(self._drain_lane(ucc))

    def _flow(self) -> None:
        consumer = self._consumer
        if not self.paused and self.in_flight >= MAX_IN_FLIGHT:
            consumer.pause(*consumer.assignment())
            self.paused = True
        elif self.paused and self.in_flight < MAX_IN_FLIGHT // 2:
            consumer.resume(*consumer.assignment())
            self.paused = False

    async def _drain_lane(self, ucc: str) -> None:
        lane = self.lanes[ucc]
        try:
            while lane:
                item = lane[0]
                await self._deliver(item)
                lane.popleft()
                self._done(item)
        finally:
            # the loop ends with the lane empty (nothing runs between its check and here), or
            # cancelled (revoked, stopping), when whoever cancelled it drops the lane
            if self.lanes.get(ucc) is lane and not lane:
                del self.lanes[ucc]
            if self.lane_tasks.get(ucc) is asyncio.current_task():
                del self.lane_tasks[ucc]

    def _done(self, item: Item) -> None:
        self.in_flight -= 1
        part = self.parts.get((item.topic, item.partition))
        if part is not None and item.offset in part.offsets:
            part.offsets[item.offset] = True

    async def _deliver(self, item: Item) -> None:
        cfg = self.cfg
        kind = cfg.kinds[item.topic]
        try:
            item.record_id, body = body_of(kind, cfg.topics.env, item.value)
        except ValueError as exc:
            await self._dead_letter(item, kind, b"", f"not a refstream output record ({exc})")
            return
        while True:
            if not item.attempts:
                item.first_attempt_at = self.now()
            error = await self._post(item.record_id, body)
            item.attempts += 1
            if error is None:
                self.stats.delivered[kind] = self.stats.delivered.get(kind, 0) + 1
                if item.attempts > 1:
                    log.info("delivered after retries", extra={"id": item.record_id, "ucc": item.ucc,
                                                                "attempts": item.attempts})
                return
            item.last_error = error
            self.stats.recent_errors.append({"at": int(self.now()), "id": item.record_id, "ucc": item.ucc,
                                             "topic": item.topic, "attempt": item.attempts, "error": error})
            pause = backoff(item.attempts, cfg.retry_first_s, cfg.retry_max_s)
            if self.now() + pause > item.written_at + cfg.max_age_s:
                await self._dead_letter(item, kind, body, error)
                return
            self.stats.retried[kind] = self.stats.retried.get(kind, 0) + 1
            item.next_attempt_at = self.now() + pause
            log.warning("delivery failed, retrying", extra={
                "id": item.record_id, "ucc": item.ucc, "topic": item.topic, "attempt": item.attempts,
                "error": error, "retry_in_s": round(pause, 3)})
            await asyncio.sleep(pause)  # the back-off itself: nothing to wait for but time

    async def _post(self, record_id: str, body: bytes) -> str | None:
        """None when delivered, else what went wrong, in words."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "refstream-deliver",
            IDEMPOTENCY_HEADER: record_id,
            SIGNATURE_HEADER: sign(body, self.cfg.secrets, int(self.now())),
        }
        async with self._sem:
            try:
                async with self._http.post(self.cfg.url, data=body, headers=headers,
                                           allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return None
                    text = (await resp.content.read(200)).decode(errors="replace").strip()
                    return f"HTTP {resp.status}" + (f": {text}" if text else "")
            except TimeoutError:
                return f"no answer within {self.cfg.timeout_s:g} s"
            except aiohttp.ClientConnectorError as exc:
                cause = exc.os_error
                what = ("connection refused" if isinstance(cause, ConnectionRefusedError)
                        else cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause))
                return f"could not connect to {exc.host}:{exc.port} ({what})"
            except aiohttp.ClientError as exc:
                return f"{type(exc).__name__}: {str(exc)[:200]}"

    async def _dead_letter(self, item: Item, kind: str, body: bytes, error: str) -> None:
        """Set the record aside with its last error; returns once the broker has it (until
        then the record is not done and its offset not committed)."""
        headers = [
            ("refstream-source", f"{item.topic}#{item.partition}@{item.offset}".encode()),
            ("refstream-error", error[:1000].encode()),
            ("refstream-attempts", str(item.attempts).encode()),
            ("refstream-first-attempt-at", str(int(item.first_attempt_at)).encode()),
        ]
        delay = 0.5
        while True:
            try:
                await self._producer.send_and_wait(self.cfg.topics.delivery_dead_letters, body or item.value,
                                                   key=item.ucc.encode(), headers=headers)
                break
            except Exception as exc:  # the broker is away: keep the record until it is back
                log.error("cannot write a delivery dead letter, retrying",
                          extra={"id": item.record_id, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.stats.dead_lettered[kind] = self.stats.dead_lettered.get(kind, 0) + 1
        log.error("gave up delivering a record: dead-lettered", extra={
            "id": item.record_id, "ucc": item.ucc, "topic": item.topic, "attempts": item.attempts,
            "error": error, "dead_letter_topic": self.cfg.topics.delivery_dead_letters})

    # --- positions -----------------------------------------------------------------------------

    async def commit(self, only: Iterable[tuple[str, int]] | None = None) -> None:
        offsets = {}
        keys = list(only) if only is not None else list(self.parts)
        for key in keys:
            part = self.parts.get(key)
            if part is None:
                continue
            pos = part.done_up_to()
            if pos is None or pos == part.committed:
                continue
            offsets[TopicPartition(*key)] = pos
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance under way: the next commit (or the new owner) catches up
            log.warning("commit failed", extra={"error": repr(exc)})
            return
        for tp, pos in offsets.items():
            part = self.parts[(tp.topic, tp.partition)]
            part.committed = pos
            for off in [o for o in part.offsets if o < pos]:
                del part.offsets[off]

    async def revoke(self, keys: list[tuple[str, int]]) -> None:
        """Partitions leave: commit what is done, and drop their records (the next owner
        delivers them again from the committed offset)."""
        await self.commit(keys)
        gone = set(keys)
        for ucc, lane in list(self.lanes.items()):
            if lane and (lane[0].topic, lane[0].partition) in gone:
                task = self.lane_tasks.pop(ucc, None)
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self.in_flight -= len(lane)
                self.lanes.pop(ucc, None)
        for key in keys:
            self.parts.pop(key, None)
            self.highwater.pop(key, None)

    async def _shutdown(self) -> None:
        self.stopping.set()
        tasks = list(self.lane_tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self.commit()
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        if self._http is not None:
            await self._http.close()


class _Listener(ConsumerRebalanceListener):
    """Commits and drops a partition's records when it is revoked (ConsumerRebalanceListener)."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.d = deliverer

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self.d.revoke([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.d.ready.set()

