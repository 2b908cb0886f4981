"""Thin agents: decode → pure step → table → send.

Stages (docs/design.md) and the topics between them, all keyed like their state:

    stripe-events (key: customer) ─┐
    worker-customer (key: customer)┴─> customer agent ── table "referrals"
    worker-invoice (key: invoice id) ─> invoice agent ── table "invoice-links"
    worker-referrer (key: ucc)        ─> referrer agent ─ table "referrers" ─> worker-outbox
    control (1 partition)             ─> control agent (a marker per stripe-events
                                         partition: where the event takes effect)
    worker-outbox (key: ucc)          ─> publisher (transactions, dedupe) ─> payouts,
                                         notifications, reviews

Each agent takes a batch of records, hands each to its stage's per-record work
(processors/stages.py: decode → alignment → pure step) against a per-batch cache of table
values, sends what they produced, waits for the broker to acknowledge all of it, and only
then writes the new table values (with their watermarks and the partition's alignment).
That order is what makes replays harmless: see processors/delivery.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

import faust
from faust.streams import _current_event

from processors import alignment, windows
from processors.alignment import Alignment
from processors.app import WorkerConfig
from processors.delivery import (
    Envelope,
    dumps_envelope,
    loads_envelope,
)
from processors.publisher import Publisher
from processors.rules import invoice_link, referral, referrer
from processors.stages import (
    ALIGNMENT_KEY,
    Counters,
    Incoming,
    Out,
    Stage,
    Wiring,
    control_markers,
    control_placed,
    is_reserved,
    stages,
)
from schemas import control
from schemas.events import CUSTOMER, INVOICE, REFERRER, Routed
from schemas.topics import placed_offset

log = logging.getLogger("refstream.worker")

BATCH = 5000  # records per batch at most
# Behind by more than BACKLOG records, a batch waits up to BACKLOG_WITHIN to fill: large
# batches cost less per record (fewer requests, one table write per key), and latency
# does not matter while catching up. A caught-up partition keeps the short wait.
BACKLOG = 500
BACKLOG_WITHIN = 1.0
CACHE_KEYS = 4096  # decoded states kept per stage between batches (see DecodedCache)


@dataclass(frozen=True, slots=True)
class StageCodec:
    step: Callable[[Any, Any, Any], tuple[Any, list[Routed]]]
    dumps: Callable[..., bytes]
    loads: Callable[[bytes], Any]
    # dumps(state, rows) reuses the encoded rows of what did not change (referrer.dumps)
    reuses_rows: bool = False


def _codec(module: Any, reuses_rows: bool = False) -> StageCodec:
    return StageCodec(module.step, module.dumps, module.loads, reuses_rows)


@dataclass
class Timings:
    batches: int = 0
    records: int = 0  # records taken in batches
    last_batch_at: float = 0.0
    # where the time goes, in seconds: stepping, waiting for the broker's acks, table writes
    step_s: float = 0.0
    ack_wait_s: float = 0.0
    write_s: float = 0.0


class DecodedCache:
    """The decoded state of the table values this worker wrote last, by key (bounded, least
    recently used first out).

    Decoding a referrer's state costs more than stepping it. A hit needs the table's
    current bytes to equal the bytes the entry was made from, so a value that changed
    any other way (a restore from the changelog after a rebalance, another worker's
    write) is decoded afresh: the cache can never serve a state the table does not hold."""

    def __init__(self, size: int = CACHE_KEYS) -> None:
        self.size = size
        self.entries: dict[str, tuple[bytes, dict[str, Any], Any]] = {}
        # per key, what the stage's `dumps` may reuse next time (StageCodec.reuses_rows);
        # dropped with the key's entry
        self.rows: dict[str, dict[str, Any]] = {}

    def get(self, key: str, raw: bytes | None) -> tuple[dict[str, Any], Any] | None:
        entry = self.entries.pop(key, None)
        if entry is None or raw is None or entry[0] != raw:
            self.rows.pop(key, None)  # what it encoded was another state's
            return None
        self.entries[key] = entry  # most recently used last
        return dict(entry[1]), entry[2]

    def put(self, key: str, raw: bytes, marks: dict[str, Any], state: Any) -> None:
        entries = self.entries
        entries.pop(key, None)
        entries[key] = (raw, dict(marks), state)
        if len(entries) > self.size:
            oldest = next(iter(entries))
            del entries[oldest]
            self.rows.pop(oldest, None)

    def rows_of(self, key: str) -> dict[str, Any]:
        return self.rows.setdefault(key, {})


class Batch:
    """Table values touched by one batch (a `processors.stages.Store`); written only after the
    batch's sends are acknowledged.

    A key's state is decoded once per batch (not at all when the cache holds what this
    worker wrote last) and encoded once, at the write, however many records of the batch
    it takes. `current` is the record being handled: table reads and writes go to its
    partition, which is the key's own (every stage is co-partitioned with its input)."""

    def __init__(self, table: faust.Table, stage: StageCodec, cache: DecodedCache | None = None) -> None:
        self.table = table
        self.stage = stage
        self.cache = cache if cache is not None else DecodedCache(0)
        self.envelopes: dict[str, Envelope] = {}
        self.states: dict[str, Any] = {}
        self.owner: dict[str, faust.types.EventT] = {}
        self.dirty: set[str] = set()
        self.alignments: dict[int, Alignment] = {}
        self.aligned_dirty: set[int] = set()
        self.metas: dict[str, bytes | None] = {}
        self.meta_dirty: set[str] = set()
        self.current: faust.types.EventT | None = None

    def _read(self, key: str) -> bytes | None:
        assert self.current is not None
        # read from the partition of the record that names the key: its own
        token = _current_event.set(weakref.ref(self.current))
        try:
            raw: bytes | None = self.table.get(key)
            return raw
        finally:
            _current_event.reset(token)

    def _write(self, key: str, raw: bytes, owner: faust.types.EventT) -> None:
        # the table's changelog partition is the owner event's: the key's own
        token = _current_event.set(weakref.ref(owner))
        try:
            self.table[key] = raw
        finally:
            _current_event.reset(token)

    # --- Store ----------------------------------------------------------------------------

    def envelope(self, key: str) -> Envelope:
        env = self.envelopes.get(key)
        if env is None:
            raw = self._read(key)
            hit = self.cache.get(key, raw)
            if hit is None:
                env = loads_envelope(raw)
            else:
                env = Envelope(None, hit[0])
                self.states[key] = hit[1]
            self.envelopes[key] = env
            assert self.current is not None
            self.owner[key] = self.current
        return env

    def state(self, key: str, env: Envelope) -> Any:
        if key not in self.states:
            self.states[key] = self.stage.loads(env.state) if env.state else None
        return self.states[key]

    def put(self, key: str, state: Any) -> None:
        assert self.current is not None
        self.states[key] = state
        self.dirty.add(key)
        self.owner[key] = self.current

    def state_keys(self) -> list[str]:
        keys = {k.decode() if isinstance(k, bytes) else str(k) for k in self.table}
        keys |= {k for k, v in self.states.items() if v is not None}
        return [k for k in keys if not is_reserved(k)]

    def alignment(self, partition: int) -> Alignment:
        a = self.alignments.get(partition)
        if a is None:
            raw = self._read(ALIGNMENT_KEY.format(partition=partition))
            a = self.alignments[partition] = alignment.loads(raw)
        return a

    def set_alignment(self, partition: int, a: Alignment) -> None:
        assert self.current is not None
        self.alignments[partition] = a
        self.aligned_dirty.add(partition)
        self.owner[ALIGNMENT_KEY.format(partition=partition)] = self.current

    def meta(self, name: str, partition: int) -> bytes | None:
        key = f"\x00{name}:{partition}"
        if key not in self.metas:
            self.metas[key] = self._read(key)
        return self.metas[key]

    def set_meta(self, name: str, partition: int, raw: bytes) -> None:
        assert self.current is not None
        key = f"\x00{name}:{partition}"
        self.metas[key] = raw
        self.meta_dirty.add(key)
        self.owner[key] = self.current

    # --- after the acks -------------------------------------------------------------------

    def write(self) -> None:
        for key in self.dirty:
            env = self.envelopes[key]
            state = self.states[key]
            env.state = (self.stage.dumps(state, self.cache.rows_of(key)) if self.stage.reuses_rows
                         else self.stage.dumps(state))
            raw = dumps_envelope(env)
            self._write(key, raw, self.owner[key])
            self.cache.put(key, raw, env.marks, self.states[key])
        for partition in self.aligned_dirty:
            key = ALIGNMENT_KEY.format(partition=partition)
            self._write(key, alignment.dumps(self.alignments[partition]), self.owner[key])
        for key in self.meta_dirty:
            raw = self.metas[key]
            assert raw is not None
            self._write(key, raw, self.owner[key])


async def take_batches(
    stream: faust.StreamT, behind: Callable[[faust.types.EventT], bool],
) -> AsyncIterator[list[faust.types.EventT]]:
    """Like faust's `take_events(BATCH, within)`, with three differences: the wait grows
    with the stream's load (`windows.next_window`), a batch whose last record is `behind` waits up
    to BACKLOG_WITHIN to fill, and a batch is acknowledged
    only when the agent comes back for the next one, never when its processing raised
    (faust acks in a `finally`, which could let the offsets of a batch whose table
    values were never written be committed)."""
    events: list[faust.types.EventT] = []
    full = asyncio.Event()
    taken = asyncio.Event()
    in_hand: asyncio.Future[None] | None = None  # set while the agent processes a batch

    async def add(value: Any) -> Any:
        # a processor of the stream: runs for each record, in the stream's drainer task
        if in_hand is not None:
            await in_hand
        event = stream.current_event
        if event is None:
            raise RuntimeError("a stream record without its event")
        events.append(event)
        if len(events) >= BATCH:
            full.set()
            taken.clear()
            await stream.wait(taken)  # type: ignore[attr-defined]
        return value

    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(stream.channel.__aiter__())  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    window = windows.QUIET_S
    while not stream.should_stop:  # type: ignore[attr-defined]
        await stream.wait_for_stopped(full, timeout=window)  # type: ignore[attr-defined]
        if events and not full.is_set() and behind(events[-1]):
            await stream.wait_for_stopped(full, timeout=BACKLOG_WITHIN - window)  # type: ignore[attr-defined]
        if not events:
            window = windows.QUIET_S
            continue
        window = windows.next_window(len(events))
        in_hand = loop.create_future()
        batch = list(events)
        yield batch
        # the agent is back for more: the batch is done (sent, acknowledged, written)
        del events[:len(batch)]
        for event in batch:
            await stream.ack(event)
        done, in_hand = in_hand, None
        done.set_result(None)
        full.clear()
        taken.set()


class Pipeline:
    """The agents, tables and web views of one worker."""

    def __init__(self, app: faust.App, cfg: WorkerConfig) -> None:
        self.app = app
        self.cfg = cfg
        self.rules = cfg.rules
        self.counters = Counters()
        self.timings = Timings()
        self.storage_error: Exception | None = None  # a table write that failed (see _run)
        self.on_storage_error: Callable[[Exception], None] | None = None
        t, n = cfg.topics, cfg.partitions
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.t_customer = cfg.internal("customer")
        self.t_invoice = cfg.internal("invoice")
        self.t_referrer = cfg.internal("referrer")
        self.t_outbox = cfg.internal("outbox")
        internal = {"partitions": n, "internal": True, **raw}
        self.customer_in = app.topic(t.stripe_events, self.t_customer, partitions=n, **raw)
        app.topic(self.t_customer, **internal)  # declared (created) with n partitions
        self.invoice_in = app.topic(self.t_invoice, **internal)
        self.referrer_in = app.topic(self.t_referrer, **internal)
        self.outbox = app.topic(self.t_outbox, **internal)
        self.control_in = app.topic(t.control, partitions=1, **raw)
        tables = {"partitions": n, "key_type": bytes, "value_type": bytes}
        # Tables (docs/design.md#stages): per customer of a referral (attribution,
        # subscription snapshots, links), per invoice (its charge), per referrer (referrals,
        # ledger, cases); each partition's alignment state sits under a reserved key
        self.referrals = app.Table("referrals", **tables)
        self.invoice_links = app.Table("invoice-links", **tables)
        self.referrers = app.Table("referrers", **tables)
        self.wiring = Wiring(
            stripe_events=t.stripe_events, control=t.control, customer=self.t_customer,
            invoice=self.t_invoice, referrer=self.t_referrer, outbox=self.t_outbox,
            dead_letters=t.dead_letters, partitions=n,
        )
        self.stages = stages(self.wiring, cfg.book, self.counters)
        self.customer_stage = _codec(referral)
        self.invoice_stage = _codec(invoice_link)
        self.referrer_stage = _codec(referrer, reuses_rows=True)
        self.outputs = {"payouts": t.payouts, "notifications": t.notifications, "reviews": t.reviews,
                        "cases": t.review_cases}
        self.publisher = Publisher(
            bootstrap=cfg.settings.kafka_bootstrap, app_id=cfg.app_id, outbox=self.t_outbox,
            outputs=self.outputs, partitions=n,
        )
        self._install()

    # --- wiring -------------------------------------------------------------------------

    def _install(self) -> None:
        app = self.app
        run = self._run
        app.agent(self.customer_in, name="customer-stage")(
            run(self.stages[CUSTOMER], self.referrals, self.customer_stage))
        app.agent(self.invoice_in, name="invoice-stage")(
            run(self.stages[INVOICE], self.invoice_links, self.invoice_stage))
        app.agent(self.referrer_in, name="referrer-stage")(
            run(self.stages[REFERRER], self.referrers, self.referrer_stage))
        app.agent(self.control_in, name="control-markers")(self._control_agent)
        app.task(self.publisher.run)
        app.task(self._announce)
        from processors import web

        web.install(app, self)

    async def _announce(self) -> None:
        """Once, with the worker's logging in place: whether the fraud signals that compare
        identities can fire (docs/rules.md#fraud-signals)."""
        if self.cfg.settings.identity_key is None:
            log.warning("identity signals off", extra={
                "reason": "REFSTREAM_IDENTITY_KEY is not set: no e-mail or card is compared, so the "
                          "self_referral and shared_card signals cannot fire (velocity still can). Set it "
                          "to the same random key for every worker and for `refstream replay`."})
        else:
            log.info("identity signals on", extra={"signals": ["self_referral", "shared_card", "velocity"]})

    def _behind(self, event: faust.types.EventT) -> bool:
        m = event.message
        end = self.app.consumer.highwater(m.tp)
        return end is not None and end - m.offset > BACKLOG

    async def _send(self, outs: list[Out]) -> list[Any]:
        """Sends and waits for the broker's acknowledgement of every record."""
        producer = self.app.producer
        pending = [await producer.send(o.topic, o.key, o.value, o.partition, None, o.headers) for o in outs]
        return list(await asyncio.gather(*pending)) if pending else []

    def _run(self, stage: Stage, table: faust.Table, codec: StageCodec) -> Callable[..., Any]:
        timings = self.timings
        cache = DecodedCache()

        async def agent(stream: faust.StreamT) -> None:
            async for evs in take_batches(stream, self._behind):
                t0 = time.perf_counter()
                batch = Batch(table, codec, cache)
                outs: list[Out] = []
                for ev in evs:
                    batch.current = ev
                    m = ev.message
                    rec = Incoming(m.topic, m.partition, m.offset, m.key, m.value or b"",
                                   tuple(m.headers or ()) if not isinstance(m.headers, dict)
                                   else tuple(m.headers.items()))
                    outs.extend(stage.handle(batch, rec))
                t1 = time.perf_counter()
                for o in outs:
                    if o.topic == self.wiring.dead_letters:
                        log.warning("dead letter", extra={"source": _header(o, "refstream-source"),
                                                          "reason": _header(o, "refstream-reason")[:300]})
                await self._send(outs)
                t2 = time.perf_counter()
                try:
                    batch.write()
                except Exception as exc:
                    # e.g. RocksDB on a full disk: kept for the worker's last word (faust's
                    # own crash reason ends up as the CancelledError of the shutdown)
                    self.storage_error = exc
                    if self.on_storage_error is not None:
                        self.on_storage_error(exc)
                    raise
                t3 = time.perf_counter()
                timings.step_s += t1 - t0
                timings.ack_wait_s += t2 - t1
                timings.write_s += t3 - t2
                timings.batches += 1
                timings.records += len(evs)
                timings.last_batch_at = time.time()

        return agent

    async def _control_agent(self, stream: faust.StreamT) -> None:
        """Places every control event in the stripe-events log: one marker per partition
        (processors/alignment.py), then a `ControlPlaced` record on the control topic. A
        record placed twice (a crash between markers and commit) gets duplicate markers,
        which every reader ignores."""
        w = self.wiring
        async for evs in take_batches(stream, self._behind):
            for ev in evs:
                m = ev.message
                if placed_offset(m.key) is not None:
                    continue  # our own placement record
                value = m.value or b""
                try:
                    record = control.decode(value)
                except control.ControlDecodeError as exc:
                    self.counters.dead_letters += 1
                    reason = f"undecodable control record: {exc}"
                    log.warning("dead letter", extra={"source": f"{m.topic}#{m.partition}@{m.offset}",
                                                      "reason": reason[:300]})
                    await self._send([Out(w.dead_letters, m.key, value, [
                        ("refstream-source", f"{m.topic}#{m.partition}@{m.offset}".encode()),
                        ("refstream-reason", reason[:1000].encode()),
                    ])])
                    continue
                if isinstance(record, control.ControlPlaced):
                    continue
                metas = await self._send(control_markers(w, m.offset, value))
                await self._send([control_placed(w, m.offset, [md.offset for md in metas])])

    # --- queries --------------------------------------------------------------------------

    def summary(self, ucc: str, as_of: int) -> dict[str, Any] | None:
        env = loads_envelope(self.referrers.get(ucc))
        if env.state is None:
            return None
        state = referrer.loads(env.state)
        return asdict(referrer.summary(state, as_of))

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), **asdict(self.timings), "published": self.publisher.published,
                "publisher_dropped_duplicates": self.publisher.dropped,
                "publisher_adopt_failures": self.publisher.adopt_failures}


def _header(o: Out, name: str) -> str:
    for k, v in o.headers:
        if k == name:
            return v.decode(errors="replace")
    return ""
