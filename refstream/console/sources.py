"""Where the console reads from and writes to: Kafka, the workers' and ingest's web APIs.

Reads: the stripe-events and control topics, folded as replay folds them (`Projector`);
the review queue from the review-cases topic (the CLI's `load_queue`); the workers' and
ingest's `/readyz`; the workers' consumer group lag. Writes: control records, with the
CLI's own `append_control`, nothing else.

A broker that cannot be reached raises `BrokerDown`, whose message says what the broker
did and the fix (`refstream.commands.kafka_access.why`), for the page that says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp

from refstream import control_log
from refstream.commands import kafka_access
from refstream.commands.kafka_access import Stalled, quiet_clients
from refstream.commands.payouts import append_control
from refstream.commands.review import NoCasesTopic, Queue, load_queue
from refstream.console.model import Fold, fold
from schemas import control
from schemas.rules import RuleBook, Rules
from schemas.topics import CONTROL, STRIPE_EVENTS, Topics

log = logging.getLogger("refstream.console")

T = TypeVar("T")


class BrokerDown(Exception):
    """Kafka could not be reached or did not answer: `str()` is the message for a person."""


class MissingTopic(Exception):
    """A topic the console reads does not exist (`refstream topics create` makes it)."""


@dataclass(frozen=True)
class Config:
    bootstrap: str
    topics: Topics
    worker_urls: tuple[str, ...] = ("http://127.0.0.1:6066",)
    ingest_url: str | None = "http://127.0.0.1:8080"
    web_token: str | None = None  # REFSTREAM_WEB_TOKEN: the workers' bearer token
    fold_wait_s: float = 20.0  # how long a page waits for a fold under way before showing the last one

    @property
    def app_id(self) -> str:
        # the workers' consumer group (processors/app.py: WorkerConfig.app_id)
        return f"{self.topics.prefix}-{self.topics.env}"


async def kafka(cfg: Config, what: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`; a failure to reach Kafka becomes BrokerDown naming `what` could not be done."""
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    from projections.logsource import SourceError

    quiet_clients()
    try:
        return await work()
    except NoCasesTopic as exc:
        raise MissingTopic(exc.topic) from None
    except SourceError as exc:
        raise BrokerDown(f"{what}: {exc}") from None
    except (KafkaError, OSError, TimeoutError, Stalled, kafka_access.NotWritten) as exc:
        raise BrokerDown(
            f"{what}: Kafka at {cfg.bootstrap} {kafka_access.why(exc, cfg.bootstrap)}. {kafka_access.FIX}"
        ) from None


# --- the log's end offsets ------------------------------------------------------------------


async def log_ends(cfg: Config) -> dict[str, int]:
    """"kind#partition" → end offset of the stripe-events and control topics (what a fold
    up to now covers), read without joining a group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    timeout_s = kafka_access.TIMEOUT_S
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=int(timeout_s * 1000), isolation_level="read_committed")
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        names = {STRIPE_EVENTS: cfg.topics.stripe_events, CONTROL: cfg.topics.control}
        if any(consumer.partitions_for_topic(t) is None for t in names.values()):
            await consumer._client.force_metadata_update()
        tps: dict[Any, str] = {}
        for kind, name in names.items():
            parts = consumer.partitions_for_topic(name)
            if not parts:
                if kind == STRIPE_EVENTS:
                    raise MissingTopic(name)
                continue
            for p in sorted(parts):
                tps[TopicPartition(name, p)] = f"{kind}#{p}"
        ends = await asyncio.wait_for(consumer.end_offsets(list(tps)), timeout_s)
        return {tps[tp]: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


def _position(plan: Any) -> dict[str, int]:
    return {f"{kind}#{p}": end for (kind, p), end in plan.end.items()} if plan is not None else {}


def fold_log(cfg: Config) -> Fold:
    """Fold the whole log as replay does (blocking: run it in a thread)."""
    from projections.logsource import KafkaSource
    from projections.replay import cyclic_gc_paused

    started = time.monotonic()
    records = asyncio.run(control_log.read(cfg.bootstrap, cfg.topics.control))
    first = control_log.first_book(records)
    if first is None:
        # no worker has run on this log yet: nothing was priced, so nothing is shown
        empty = fold([], RuleBook.of(Rules()))
        empty.has_revision = False
        return empty
    source = KafkaSource(cfg.bootstrap, cfg.topics, headers=False, in_child=False)
    with cyclic_gc_paused():
        folded = fold(source, first)
    folded.position = _position(source.plan)
    folded.seconds = time.monotonic() - started
    log.info("folded the log", extra={"stripe_events": folded.stripe_events,
                                      "control_events": folded.control_events,
                                      "referrers": len(folded.engine.referrers),
                                      "seconds": round(folded.seconds, 3)})
    return folded


class FoldSource(Protocol):
    async def current(self) -> tuple[Fold, bool]: ...

    def invalidate(self) -> None: ...


# an increment larger than this is folded by a full fold, which streams the log
MAX_INCREMENT = 200_000


async def read_increment(cfg: Config, since: dict[str, int], ends: dict[str, int]) -> list[Any] | None:
    """The records appended between `since` and `ends` ("kind#partition" → offset), merged in
    the workers' one order by `projections.logsource.LogMerger`; None when they cannot be
    folded onto the earlier fold exactly (partitions changed, records deleted, a marker whose
    control record is not in this read, or too many records: a full fold then)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import OffsetOutOfRangeError

    from projections.logsource import LogMerger, LogRecord

    if set(since) != set(ends) or any(ends[k] < since[k] for k in ends):
        return None
    if sum(ends[k] - since[k] for k in ends) > MAX_INCREMENT:
        return None
    names = {STRIPE_EVENTS: cfg.topics.stripe_events, CONTROL: cfg.topics.control}
    timeout_s = kafka_access.TIMEOUT_S
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="none", isolation_level="read_committed",
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        parts: dict[str, tuple[str, int, Any]] = {}
        for key in ends:
            kind, number = key.split("#")
            parts[key] = (kind, int(number), TopicPartition(names[kind], int(number)))
        consumer.assign([tp for *_, tp in parts.values()])
        got: dict[str, list[LogRecord]] = {key: [] for key in parts}
        for key, (kind, p, tp) in parts.items():
            if ends[key] <= since[key]:
                continue
            consumer.seek(tp, since[key])
            deadline = time.monotonic() + 60
            while await consumer.position(tp) < ends[key]:
                if time.monotonic() > deadline:
                    raise Stalled([tp.topic], 60)
                try:
                    fetched = await consumer.getmany(tp, timeout_ms=500)
                except OffsetOutOfRangeError:
                    return None
                got[key] += [LogRecord(kind, p, m.offset, m.timestamp, m.key, (),
                                       m.value if m.value is not None else b"")
                             for m in fetched.get(tp, []) if m.offset < ends[key]]
    finally:
        await consumer.stop()
    control_records = [r for key, recs in got.items() if key.startswith(CONTROL + "#") for r in recs]
    stripe = {(kind, p): got[key] for key, (kind, p, _) in parts.items() if kind == STRIPE_EVENTS}
    merger = LogMerger(list(stripe), control_records)
    for part, recs in stripe.items():
        merger.add(part, recs)
        merger.finish(part)
    out = merger.drain()
    return out if merger.done else None


@dataclass
class Projector:
    """The latest fold of the log, folded again (in a thread) when the log has grown.

    A fold reads the whole log, so on a large log it is not repeated for every new record:
    a new fold starts once the log has grown and at least `min_refresh_s`, or as long as
    the last fold took, has passed since the last one ended (so folding uses at most about
    half a core). `invalidate()` (after the console's own action) lifts the wait once."""

    cfg: Config
    min_refresh_s: float = 5.0
    latest: Fold | None = None
    _task: asyncio.Task[Fold] | None = None
    _done_at: float = field(default=0.0)
    _forced: bool = True

    def invalidate(self) -> None:
        self._forced = True

    async def current(self) -> tuple[Fold, bool]:
        """(a fold, whether it covers the log as it is now). Waits up to `fold_wait_s` for a
        fold under way; when that is not enough, or a fold is not due yet, the last fold
        (not fresh). Raises BrokerDown when Kafka cannot be reached, and `Folding` while
        there is no fold yet."""
        ends = await kafka(self.cfg, "Cannot read the log's end", lambda: log_ends(self.cfg))
        latest = self.latest
        if latest is not None and latest.position == ends:
            return latest, True
        if self._task is None:
            due = self._done_at + max(self.min_refresh_s, latest.seconds if latest else 0.0)
            if latest is not None and not self._forced and time.monotonic() < due:
                return latest, False
            self._forced = False
            self._task = asyncio.create_task(self._fold())
        task = self._task
        try:
            folded = await asyncio.wait_for(asyncio.shield(task), self.cfg.fold_wait_s)
        except TimeoutError:
            if self.latest is not None:
                return self.latest, False
            raise Folding() from None
        return folded, all(folded.position.get(k, 0) >= v for k, v in ends.items())

    async def _fold(self) -> Fold:
        try:
            folded = await self._increment()
            if folded is None:
                folded = await kafka(self.cfg, "Cannot read the log",
                                     lambda: asyncio.to_thread(fold_log, self.cfg))
            self.latest = folded
            return folded
        finally:
            self._task = None
            self._done_at = time.monotonic()


    async def _increment(self) -> Fold | None:
        """The last fold continued with what was appended since, when that gives what a full
        fold gives: every control record it folded had been placed by a worker (one folded
        by its timestamp may take effect elsewhere, at its markers), and the records since
        can be merged on their own (records of different partitions between two control
        records may fold in any order: docs/design.md#one-order)."""
        last = self.latest
        if last is None or not last.has_revision or last.unplaced or not last.position:
            return None
        started = time.monotonic()
        ends = await kafka(self.cfg, "Cannot read the log's end", lambda: log_ends(self.cfg))
        records = await kafka(self.cfg, "Cannot read the log",
                              lambda: read_increment(self.cfg, last.position, ends))
        if records is None:
            return None

        def fold_more() -> Fold:
            more = last.continued()
            fold([records], more.engine.book, into=more)
            more.position = ends
            more.seconds = time.monotonic() - started
            return more

        folded = await asyncio.to_thread(fold_more)
        log.info("folded what the log appended", extra={"records": len(records),
                                                        "seconds": round(folded.seconds, 3)})
        return folded


class Folding(Exception):
    """The first fold of the log is still under way."""


# --- the review queue and the control topic -------------------------------------------------


async def queue(cfg: Config) -> Queue:
    return await kafka(cfg, "Cannot read the review queue", lambda: load_queue(cfg.bootstrap, cfg.topics))


async def append(cfg: Config, record: control.ControlRecord, what: str) -> tuple[int, int]:
    """Append one control record, as the CLI does; (partition, offset)."""

    async def write() -> tuple[int, int]:
        try:
            return await append_control(cfg.bootstrap, cfg.topics.control, record)
        except kafka_access.Unconfirmed as exc:
            raise BrokerDown(
                f"{what} may or may not have been recorded: Kafka at {cfg.bootstrap} "
                f"{kafka_access.why(exc, cfg.bootstrap)}. Reload the page once the broker answers to see "
                f"whether it arrived; doing it again is safe."
            ) from None

    return await kafka(cfg, f"{what} was not recorded", write)


# --- health ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    name: str
    url: str
    ok: bool
    status: str  # what a person reads: "ready", "recovering tables", "not answering (…)"
    details: dict[str, Any]


async def _readyz(http: aiohttp.ClientSession, name: str, url: str, headers: dict[str, str]) -> Health:
    try:
        async with http.get(url.rstrip("/") + "/readyz", headers=headers,
                            timeout=aiohttp.ClientTimeout(total=3)) as resp:
            body: Any = None
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            details = body if isinstance(body, dict) else {}
            if resp.status == 200:
                return Health(name, url, True, "ready", details)
            if resp.status == 401:
                return Health(name, url, False, "refuses the console's token: set REFSTREAM_WEB_TOKEN as "
                              "on the worker", {})
            return Health(name, url, False, f"not ready (HTTP {resp.status})", details)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Health(name, url, False, f"not answering ({type(exc).__name__})", {})


async def health(cfg: Config) -> list[Health]:
    headers = {"Authorization": f"Bearer {cfg.web_token}"} if cfg.web_token else {}
    async with aiohttp.ClientSession() as http:
        checks = [_readyz(http, f"worker {i + 1}" if len(cfg.worker_urls) > 1 else "worker", url, headers)
                  for i, url in enumerate(cfg.worker_urls)]
        if cfg.ingest_url:
            checks.append(_readyz(http, "ingest", cfg.ingest_url, {}))
        return list(await asyncio.gather(*checks))


@dataclass(frozen=True, slots=True)
class Lag:
    topic: str
    records: int  # appended and not yet committed by the workers' group
    committed: bool  # False: the group has committed nothing on this topic yet


async def lag(cfg: Config) -> list[Lag]:
    """How far the workers' consumer group is behind on stripe-events and control."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    async def read() -> list[Lag]:
        timeout_s = kafka_access.TIMEOUT_S
        admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap, request_timeout_ms=int(timeout_s * 1000))
        consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, group_id=None, enable_auto_commit=False,
                                    request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            await asyncio.wait_for(consumer.start(), timeout_s)
            await consumer._client.force_metadata_update()
            try:
                committed = await asyncio.wait_for(admin.list_consumer_group_offsets(cfg.app_id), timeout_s)
            except GroupCoordinatorNotAvailableError:
                committed = {}  # a broker on which no group has committed anything yet
            out = []
            for topic in (cfg.topics.stripe_events, cfg.topics.control):
                tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
                if not tps:
                    continue
                ends = await asyncio.wait_for(consumer.end_offsets(tps), timeout_s)
                behind, any_commit = 0, False
                for tp, end in ends.items():
                    meta = committed.get(tp)
                    if meta is not None and meta.offset >= 0:
                        any_commit = True
                        behind += max(0, end - meta.offset)
                    else:
                        behind += end
                out.append(Lag(topic, behind, any_commit or sum(ends.values()) == 0))
            return out
        finally:
            await consumer.stop()
            await admin.close()

    return await kafka(cfg, "Cannot read the workers' progress", read)
