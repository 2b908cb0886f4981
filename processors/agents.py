"""Thin agents: decode → pure step → table → send.

Stages (docs/design.md) and the topics between them, all keyed like their state:

    stripe-events (key: customer) ─┐
    worker-customer (key: customer)┴─> customer agent ── table "referrals"
    worker-invoice (key: invoice id) ─> invoice agent ── table "invoice-links"
    worker-referrer (key: ucc)        ─> referrer agent ─ table "referrers" ─> worker-outbox
    control (1 partition)             ─> control agent (fans payout runs out to every
                                         worker-referrer partition)
    worker-outbox (key: ucc)          ─> publisher (transactions, dedupe) ─> payouts,
                                         notifications, reviews

Each agent takes a batch of records, steps them through the pure core against a per-batch
cache of table values, sends what they produced, waits for the broker to acknowledge all
of it, and only then writes the new table values (with their watermarks). That order is
what makes replays harmless: see processors/delivery.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import faust
from faust.streams import _current_event

from processors import invoice_link, referral, referrer, windows
from processors.app import WorkerConfig
from processors.delivery import (
    H_DEST,
    H_KIND,
    H_MSG_ID,
    KIND_COMMAND,
    KIND_CONTROL,
    KIND_EVENT,
    KIND_STRIPE,
    Envelope,
    MessageId,
    dumps_envelope,
    header,
    loads_envelope,
    murmur2_partition,
)
from processors.engine import route_stripe_event
from processors.publisher import Publisher
from schemas import commands, control, events
from schemas.events import CUSTOMER, INVOICE, OUTPUTS, REFERRER, Routed
from schemas.stripe import StripeEvent, StripeParseError, parse_event

log = logging.getLogger("refstream.worker")

BATCH = 5000  # records per batch at most
# Behind by more than BACKLOG records, a batch waits up to BACKLOG_WITHIN to fill: large
# batches cost less per record (fewer requests, one table write per key), and latency
# does not matter while catching up. A caught-up partition keeps the short wait.
BACKLOG = 500
BACKLOG_WITHIN = 1.0
CACHE_KEYS = 4096  # decoded states kept per stage between batches (see DecodedCache)


@dataclass(slots=True)
class Out:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None = None


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
class Counters:
    processed: int = 0
    skipped: int = 0  # replays below the watermark
    dead_letters: int = 0
    batches: int = 0
    records: int = 0  # records taken in batches (processed + skipped + forwarded)
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
    """Table values touched by one batch; written only after its sends are acknowledged.

    A key's state is decoded once per batch (not at all when the cache holds what this
    worker wrote last) and encoded once, at the write, however many records of the batch
    it takes."""

    def __init__(
        self, table: faust.Table, stage: StageCodec | None, cache: DecodedCache | None = None,
    ) -> None:
        self.table = table
        self.stage = stage
        self.cache = cache if cache is not None else DecodedCache(0)
        self.envelopes: dict[str, Envelope] = {}
        self.states: dict[str, Any] = {}
        self.owner: dict[str, faust.types.EventT] = {}
        self.dirty: set[str] = set()

    def state(self, key: str, env: Envelope) -> Any:
        if key not in self.states:
            assert self.stage is not None
            self.states[key] = self.stage.loads(env.state) if env.state else None
        return self.states[key]

    def get(self, key: str, event: faust.types.EventT) -> Envelope:
        env = self.envelopes.get(key)
        if env is None:
            # read from the partition of the record that names the key: its own
            token = _current_event.set(weakref.ref(event))
            try:
                raw = self.table.get(key)
            finally:
                _current_event.reset(token)
            hit = self.cache.get(key, raw)
            if hit is None:
                env = loads_envelope(raw)
            else:
                env = Envelope(None, hit[0])
                self.states[key] = hit[1]
            self.envelopes[key] = env
            self.owner[key] = event
        return env

    def touch(self, key: str, event: faust.types.EventT) -> None:
        self.dirty.add(key)
        self.owner[key] = event

    def write(self) -> None:
        for key in self.dirty:
            assert self.stage is not None
            env = self.envelopes[key]
            state = self.states[key]
            env.state = (self.stage.dumps(state, self.cache.rows_of(key)) if self.stage.reuses_rows
                         else self.stage.dumps(state))
            raw = dumps_envelope(env)
            # the table's changelog partition is the current event's: the key's own
            token = _current_event.set(weakref.ref(self.owner[key]))
            try:
                self.table[key] = raw
            finally:
                _current_event.reset(token)
            self.cache.put(key, raw, env.marks, self.states[key])


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
        # ledger, cases)
        self.referrals = app.Table("referrals", **tables)
        self.invoice_links = app.Table("invoice-links", **tables)
        self.referrers = app.Table("referrers", **tables)
        self.customer_stage = _codec(referral)
        self.invoice_stage = _codec(invoice_link)
        self.referrer_stage = _codec(referrer, reuses_rows=True)
        self.outputs = {"payouts": t.payouts, "notifications": t.notifications, "reviews": t.reviews}
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
            run(self._customer_record, self.referrals, self.customer_stage))
        app.agent(self.invoice_in, name="invoice-stage")(
            run(self._invoice_record, self.invoice_links, self.invoice_stage))
        app.agent(self.referrer_in, name="referrer-stage")(
            run(self._referrer_record, self.referrers, self.referrer_stage))
        app.agent(self.control_in, name="control-fanout")(self._run(self._control_record, None))
        app.task(self.publisher.run)
        from processors import web

        web.install(app, self)

    def _run(
        self, handle: Callable[..., list[Out]], table: faust.Table | None, stage: StageCodec | None = None,
    ) -> Callable[..., Any]:
        counters = self.counters
        app = self.app
        cache = DecodedCache()

        def behind(event: faust.types.EventT) -> bool:
            m = event.message
            end = app.consumer.highwater(m.tp)
            return end is not None and end - m.offset > BACKLOG

        async def agent(stream: faust.StreamT) -> None:
            async for evs in take_batches(stream, behind):
                t0 = time.perf_counter()
                batch = Batch(table, stage, cache) if table is not None else None
                outs: list[Out] = []
                for ev in evs:
                    outs.extend(handle(ev, batch))
                t1 = time.perf_counter()
                pending = [
                    await app.producer.send(o.topic, o.key, o.value, o.partition, None, o.headers)
                    for o in outs
                ]
                if pending:
                    await asyncio.gather(*pending)
                t2 = time.perf_counter()
                if batch is not None:
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
                counters.step_s += t1 - t0
                counters.ack_wait_s += t2 - t1
                counters.write_s += t3 - t2
                counters.batches += 1
                counters.records += len(evs)
                counters.last_batch_at = time.time()

        return agent

    # --- stepping -------------------------------------------------------------------------

    def _apply(
        self, batch: Batch, stage: StageCodec, key: str, mid: MessageId, record: Any,
        ev: faust.types.EventT, *, store_new: bool = True,
    ) -> list[Routed] | None:
        """Step one record for one key; None when it was applied before (a replay)."""
        env = batch.get(key, ev)
        if env.seen(mid):
            self.counters.skipped += 1
            return None
        state = batch.state(key, env)
        if state is None and not store_new:
            return []  # a control record for a referrer with nothing: nothing to keep
        new, routed = stage.step(state, record, self.rules)
        batch.states[key] = new
        env.mark(mid)
        batch.touch(key, ev)
        self.counters.processed += 1
        return routed

    def _route(
        self, routed: Iterable[Routed], source: MessageId, raw_stripe: bytes | None = None
    ) -> list[Out]:
        outs: list[Out] = []
        for i, r in enumerate(routed):
            mid = MessageId(source.upstream, source.offset, source.index * 10_000 + i)
            hid = (H_MSG_ID, mid.encode())
            if r.dest in OUTPUTS:
                outs.append(Out(self.t_outbox, r.key.encode(), commands.encode(r.record),
                                [hid, (H_KIND, KIND_COMMAND), (H_DEST, r.dest.encode())]))
            elif r.dest == CUSTOMER and isinstance(r.record, StripeEvent):
                assert raw_stripe is not None
                outs.append(Out(self.t_customer, r.key.encode(), raw_stripe, [hid, (H_KIND, KIND_STRIPE)]))
            else:
                stages = {CUSTOMER: self.t_customer, INVOICE: self.t_invoice, REFERRER: self.t_referrer}
                topic = stages[r.dest]
                outs.append(Out(topic, r.key.encode(), events.encode(r.record), [hid, (H_KIND, KIND_EVENT)]))
        return outs

    def _dead_letter(self, ev: faust.types.EventT, reason: str) -> list[Out]:
        m = ev.message
        self.counters.dead_letters += 1
        log.warning("dead letter", extra={"topic": m.topic, "partition": m.partition, "offset": m.offset,
                                          "reason": reason[:300]})
        return [Out(self.cfg.topics.dead_letters, m.key, m.value or b"", [
            ("refstream-source", f"{m.topic}#{m.partition}@{m.offset}".encode()),
            ("refstream-reason", reason[:1000].encode()),
        ])]

    def _customer_record(self, ev: faust.types.EventT, batch: Batch) -> list[Out]:
        m = ev.message
        key = m.key.decode() if m.key else ""
        kind = header(m.headers, H_KIND) if m.topic == self.t_customer else KIND_STRIPE
        try:
            if kind == KIND_STRIPE:
                raw = m.value
                event = parse_event(raw)
                routed = route_stripe_event(event)
            else:
                raw = None
                routed = [Routed(CUSTOMER, key, events.decode(m.value))]
        except (StripeParseError, events.EventDecodeError) as exc:
            return self._dead_letter(ev, f"undecodable record: {exc}")
        mid_base = self._incoming_id(m)
        outs: list[Out] = []
        for i, r in enumerate(routed):
            mid = MessageId(mid_base.upstream, mid_base.offset, mid_base.index * 100 + i)
            if r.dest == CUSTOMER and r.key == key:
                try:
                    produced = self._apply(batch, self.customer_stage, key, mid, r.record, ev)
                except Exception as exc:  # a core bug must not stop the partition
                    outs += self._dead_letter(ev, f"customer stage failed: {exc!r}")
                    continue
                if produced:
                    outs += self._route(produced, self._own_id(m, i), raw)
            else:
                # not this partition's key (an invoice payment, or a differently keyed event)
                outs += self._route([r], self._own_id(m, i), raw)
        return outs

    def _invoice_record(self, ev: faust.types.EventT, batch: Batch) -> list[Out]:
        m = ev.message
        key = m.key.decode() if m.key else ""
        try:
            record = events.decode(m.value)
        except events.EventDecodeError as exc:
            return self._dead_letter(ev, f"undecodable record: {exc}")
        try:
            produced = self._apply(batch, self.invoice_stage, key, self._incoming_id(m), record, ev)
        except Exception as exc:
            return self._dead_letter(ev, f"invoice stage failed: {exc!r}")
        return self._route(produced or [], self._own_id(m, 0))

    def _referrer_record(self, ev: faust.types.EventT, batch: Batch) -> list[Out]:
        m = ev.message
        key = m.key.decode() if m.key else ""
        kind = header(m.headers, H_KIND)
        try:
            record: Any = control.decode(m.value) if kind == KIND_CONTROL else events.decode(m.value)
        except (control.ControlDecodeError, events.EventDecodeError) as exc:
            return self._dead_letter(ev, f"undecodable record: {exc}")
        mid = self._incoming_id(m)
        if isinstance(record, control.PayoutRun):
            # one copy per partition: step every referrer this partition owns, in ucc order
            uccs = sorted(self._owned_referrers(m.partition, batch))
        else:
            uccs = [key]
        store_new = not isinstance(record, control.PayoutRun | control.ReviewDecision)
        outs: list[Out] = []
        for j, ucc in enumerate(uccs):
            try:
                produced = self._apply(batch, self.referrer_stage, ucc, mid, record, ev, store_new=store_new)
            except Exception as exc:
                outs += self._dead_letter(ev, f"referrer stage failed for {ucc}: {exc!r}")
                continue
            if produced:
                outs += self._route(produced, self._own_id(m, j))
        return outs

    def _control_record(self, ev: faust.types.EventT, batch: Batch | None) -> list[Out]:
        m = ev.message
        try:
            record = control.decode(m.value)
        except control.ControlDecodeError as exc:
            return self._dead_letter(ev, f"undecodable control record: {exc}")
        kind = (H_KIND, KIND_CONTROL)
        if isinstance(record, control.PayoutRun):
            return [
                Out(self.t_referrer, b"*payout-run*", m.value,
                    [(H_MSG_ID, self._own_id(m, 0).encode()), kind], partition=p)
                for p in range(self.cfg.partitions)
            ]
        return [Out(self.t_referrer, record.ucc.encode(), m.value,
                    [(H_MSG_ID, self._own_id(m, 0).encode()), kind])]

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _incoming_id(m: Any) -> MessageId:
        """The id of the fact a record stands for: its sender's, else the record itself."""
        raw = header(m.headers, H_MSG_ID)
        if raw is not None:
            return MessageId.decode(raw)
        return MessageId.of_record(m.topic, m.partition, m.offset)

    @staticmethod
    def _own_id(m: Any, index: int) -> MessageId:
        """The id base for what processing this record produces."""
        return MessageId.of_record(m.topic, m.partition, m.offset, index)

    def _owned_referrers(self, partition: int, batch: Batch) -> set[str]:
        n = self.cfg.partitions
        keys = {k.decode() if isinstance(k, bytes) else str(k) for k in self.referrers}
        keys |= set(batch.envelopes)
        return {k for k in keys if murmur2_partition(k.encode(), n) == partition}

    def summary(self, ucc: str, as_of: int) -> dict[str, Any] | None:
        env = loads_envelope(self.referrers.get(ucc))
        if env.state is None:
            return None
        state = referrer.loads(env.state)
        return asdict(referrer.summary(state, as_of))

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), "published": self.publisher.published,
                "publisher_dropped_duplicates": self.publisher.dropped,
                "publisher_adopt_failures": self.publisher.adopt_failures}

