"""What each stage partition of the worker does with one input record, over a key-value store.

The Faust agents (processors/agents.py) call this with their table as the store and send
what it returns; the interleaving test (tests/unit/test_interleavings.py) calls the very
same code with dicts as stores and lists as topics, under generated schedules, crashes and
duplicates. No Faust, no I/O, no clock here: decode → alignment → pure step → records out.

Stages and the channels each stage partition listens on (docs/design.md):

    customer p  ← stripe-events p ("stripe": Stripe events and control markers),
                  worker-customer p (links from "invoice:r", forwarded events from "customer:r")
    invoice r   ← worker-invoice r ("customer:p")
    referrer q  ← worker-referrer q ("customer:p")

Every record a stage sends carries its sender (`H_FROM`, "<stage>:<partition>"), the id of
the fact it stands for (`H_MSG_ID`, processors/delivery.py) and its kind. A control event
reaches the stages as a barrier (processors/alignment.py): customer p sends it to every
invoice and customer partition when its marker arrives, invoice r when it has it from every
customer partition, customer p to every referrer partition once it has it from all of its
channels; the referrer partition then applies it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from processors import alignment
from processors.alignment import Alignment, HeldRecord
from processors.delivery import (
    H_CONTROL_OFFSET,
    H_DEST,
    H_FROM,
    H_KIND,
    H_MSG_ID,
    KIND_BARRIER,
    KIND_COMMAND,
    KIND_EVENT,
    KIND_STRIPE,
    Envelope,
    MessageId,
    header,
    murmur2_partition,
)
from processors.rules import invoice_link, referral, referrer
from processors.rules.engine import revision_of, route_stripe_event
from schemas import commands, control, events
from schemas.events import CASES, CUSTOMER, INVOICE, OUTPUTS, REFERRER, Routed
from schemas.rules import RuleBook, Rules, RulesError
from schemas.stripe import StripeEvent, StripeParseError, parse_event
from schemas.topics import marker_key, marker_offset, placed_key

# The table key of a stage partition's alignment state; never a Stripe, invoice or ucc id.
ALIGNMENT_KEY = "\x00alignment:{partition}"


def is_reserved(key: str) -> bool:
    return key.startswith("\x00")


@dataclass(slots=True)
class Out:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None = None


class Incoming(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class Store(Protocol):
    """A stage partition's table, as one record's work needs it."""

    def envelope(self, key: str) -> Envelope: ...
    def state(self, key: str, env: Envelope) -> Any: ...
    def put(self, key: str, state: Any) -> None: ...
    def state_keys(self) -> Iterable[str]: ...  # the stage-state keys this partition holds
    def alignment(self, partition: int) -> Alignment: ...
    def set_alignment(self, partition: int, a: Alignment) -> None: ...
    # a stage partition's own small values under reserved keys (its rules revisions)
    def meta(self, name: str, partition: int) -> bytes | None: ...
    def set_meta(self, name: str, partition: int, raw: bytes) -> None: ...


@dataclass
class Counters:
    processed: int = 0
    skipped: int = 0  # replays below the watermark
    dead_letters: int = 0
    held: int = 0  # records held at a barrier
    barriers: int = 0  # control events completed


@dataclass(frozen=True, slots=True)
class Wiring:
    """Topic names and the partition count every stage is co-partitioned with."""

    stripe_events: str
    control: str
    customer: str  # worker-customer
    invoice: str  # worker-invoice
    referrer: str  # worker-referrer
    outbox: str  # worker-outbox
    dead_letters: str
    partitions: int


Step = Callable[[Any, Any, RuleBook], tuple[Any, list[Routed]]]
META_RULES = "rules"


class Stage:
    """One stage's per-record work; subclasses say how records read and what barriers do."""

    name = ""

    def __init__(self, wiring: Wiring, rules: Rules | RuleBook, step: Step, counters: Counters) -> None:
        self.w = wiring
        # the first revision in the log, which prices everything before later ones; the
        # later ones reach each partition as control events (docs/rules.md#revisions)
        self.base = rules if isinstance(rules, RuleBook) else RuleBook.of(rules)
        self._books: dict[bytes, RuleBook] = {}
        self.step = step
        self.counters = counters
        n = wiring.partitions
        self.expected = frozenset(self._expected(n))

    def _expected(self, n: int) -> list[str]:
        return [f"customer:{p}" for p in range(n)]

    # --- the record loop ----------------------------------------------------------------

    def handle(self, store: Store, rec: Incoming) -> list[Out]:
        outs: list[Out] = []
        queue: deque[Incoming] = deque((rec,))
        while queue:
            r = queue.popleft()
            channel = self.channel(r)
            a = store.alignment(r.partition)
            if a.pending and a.blocked(channel):
                store.set_alignment(r.partition, alignment.hold(a, channel, HeldRecord(*r)))
                self.counters.held += 1
                continue
            barrier = self.barrier(r)
            if barrier is None:
                outs += self.process(store, r)
                continue
            k, value = barrier
            a, new, completed, released = alignment.arrive(a, k, value, channel, self.expected)
            if not new:
                continue
            store.set_alignment(r.partition, a)
            outs += self.on_arrival(r, k, value, channel)
            for c in completed:
                self.counters.barriers += 1
                outs += self.on_complete(store, r.partition, c.control_offset, c.control)
            queue.extendleft(Incoming(*h) for _, h in reversed(released))
        return outs

    # --- per stage -----------------------------------------------------------------------

    def channel(self, r: Incoming) -> str:
        raw = header(r.headers, H_FROM)
        return raw.decode() if raw is not None else "unknown"

    def barrier(self, r: Incoming) -> tuple[int, bytes] | None:
        if header(r.headers, H_KIND) != KIND_BARRIER:
            return None
        raw = header(r.headers, H_CONTROL_OFFSET)
        return (int(raw), r.value) if raw is not None else None

    def process(self, store: Store, r: Incoming) -> list[Out]:
        raise NotImplementedError

    def on_arrival(self, r: Incoming, k: int, value: bytes, channel: str) -> list[Out]:
        return []

    def on_complete(self, store: Store, partition: int, k: int, value: bytes) -> list[Out]:
        return []

    # --- helpers --------------------------------------------------------------------------

    def sender(self, partition: int) -> tuple[str, bytes]:
        return (H_FROM, f"{self.name}:{partition}".encode())

    def barriers_to(self, topic: str, k: int, value: bytes, partition: int) -> list[Out]:
        headers = [(H_KIND, KIND_BARRIER), (H_CONTROL_OFFSET, str(k).encode()), self.sender(partition)]
        return [Out(topic, b"\x00barrier", value, list(headers), partition=q)
                for q in range(self.w.partitions)]

    def book(self, store: Store, partition: int) -> RuleBook:
        """The revisions this partition has passed: the first one, and each later one from
        where its control event took effect."""
        raw = store.meta(META_RULES, partition)
        if not raw:
            return self.base
        book = self._books.get(raw)
        if book is None:
            book = self.base
            for text in orjson.loads(raw):
                record = control.decode(text.encode())
                if isinstance(record, control.RulesRevision):
                    try:
                        book = book.adding(revision_of(record))
                    except RulesError:
                        continue  # refused by `rules publish`; only a hand-written record is bad
            if len(self._books) > 64:
                self._books.clear()
            self._books[raw] = book
        return book

    def add_revision(self, store: Store, partition: int, value: bytes) -> None:
        raw = store.meta(META_RULES, partition)
        texts: list[str] = orjson.loads(raw) if raw else []
        text = value.decode()
        if text not in texts:
            store.set_meta(META_RULES, partition, orjson.dumps([*texts, text]))

    def apply(self, store: Store, key: str, mid: MessageId, record: Any, *, partition: int,
              store_new: bool = True) -> list[Routed] | None:
        """Step one record for one key; None when it was applied before (a replay)."""
        env = store.envelope(key)
        if env.seen(mid):
            self.counters.skipped += 1
            return None
        state = store.state(key, env)
        if state is None and not store_new:
            return []  # a control event for a referrer with nothing: nothing to keep
        new, routed = self.step(state, record, self.book(store, partition))
        self.counters.processed += 1
        if new is state and not routed:
            # the rule that owns the record changed nothing: no table write (a replay of it
            # after a crash steps it to the same nothing)
            return routed
        store.put(key, new)
        env.mark(mid)
        return routed

    def route(self, routed: Iterable[Routed], source: MessageId, partition: int,
              raw_stripe: bytes | None = None) -> list[Out]:
        outs: list[Out] = []
        sender = self.sender(partition)
        w = self.w
        topics = {CUSTOMER: w.customer, INVOICE: w.invoice, REFERRER: w.referrer}
        for i, r in enumerate(routed):
            mid = MessageId(source.upstream, source.offset, source.index * 10_000 + i)
            hid = (H_MSG_ID, mid.encode())
            if r.dest == CASES:
                # keyed by its own id on the compacted topic, but in the outbox partition of
                # its ucc (`r.key`), with the referrer's other commands: the publisher keeps
                # their order and finds its id among that partition's
                outs.append(Out(w.outbox, r.record.case_state_id.encode(), commands.encode(r.record),
                                [hid, (H_KIND, KIND_COMMAND), (H_DEST, r.dest.encode()), sender],
                                partition=murmur2_partition(r.key.encode(), w.partitions)))
            elif r.dest in OUTPUTS:
                outs.append(Out(w.outbox, r.key.encode(), commands.encode(r.record),
                                [hid, (H_KIND, KIND_COMMAND), (H_DEST, r.dest.encode()), sender]))
            elif r.dest == CUSTOMER and isinstance(r.record, StripeEvent):
                assert raw_stripe is not None
                outs.append(Out(w.customer, r.key.encode(), raw_stripe, [hid, (H_KIND, KIND_STRIPE), sender]))
            else:
                outs.append(Out(topics[r.dest], r.key.encode(), events.encode(r.record),
                                [hid, (H_KIND, KIND_EVENT), sender]))
        return outs

    def dead_letter(self, r: Incoming, reason: str) -> list[Out]:
        self.counters.dead_letters += 1
        return [Out(self.w.dead_letters, r.key, r.value, [
            ("refstream-source", f"{r.topic}#{r.partition}@{r.offset}".encode()),
            ("refstream-reason", reason[:1000].encode()),
        ])]


def incoming_id(r: Incoming) -> MessageId:
    """The id of the fact a record stands for: its sender's, else the record itself."""
    raw = header(r.headers, H_MSG_ID)
    if raw is not None:
        return MessageId.decode(raw)
    return MessageId.of_record(r.topic, r.partition, r.offset)


def own_id(r: Incoming, index: int) -> MessageId:
    """The id base for what processing this record produces."""
    return MessageId.of_record(r.topic, r.partition, r.offset, index)


class CustomerStage(Stage):
    name = CUSTOMER

    def _expected(self, n: int) -> list[str]:
        return ["stripe", *(f"invoice:{r}" for r in range(n)), *(f"customer:{p}" for p in range(n))]

    def channel(self, r: Incoming) -> str:
        return "stripe" if r.topic == self.w.stripe_events else super().channel(r)

    def barrier(self, r: Incoming) -> tuple[int, bytes] | None:
        if r.topic == self.w.stripe_events:
            k = marker_offset(r.key)
            return None if k is None else (k, r.value)
        return super().barrier(r)

    def on_arrival(self, r: Incoming, k: int, value: bytes, channel: str) -> list[Out]:
        if channel != "stripe":
            return []
        # everything this partition routed from before its marker is sent: say so to every
        # partition it routes to
        return (self.barriers_to(self.w.invoice, k, value, r.partition)
                + self.barriers_to(self.w.customer, k, value, r.partition))

    def on_complete(self, store: Store, partition: int, k: int, value: bytes) -> list[Out]:
        if _is_revision(value):
            self.add_revision(store, partition, value)
        return self._link(store, partition, k, value) + self.barriers_to(self.w.referrer, k, value, partition)

    def _link(self, store: Store, partition: int, k: int, value: bytes) -> list[Out]:
        """A ReferrerLink takes effect here, at the partition that owns its customer: what it
        sends (the customer's identities as its referrer's own) goes before the barrier
        (docs/rules.md#fraud-signals)."""
        try:
            record = control.decode(value)
        except control.ControlDecodeError:
            return []
        if not isinstance(record, control.ReferrerLink):
            return []
        key = record.customer_id
        if murmur2_partition(key.encode(), self.w.partitions) != partition:
            return []
        try:
            produced = self.apply(store, key, MessageId.of_record(self.w.control, 0, k), record,
                                  partition=partition)
        except Exception as exc:  # a core bug must not stop the partition
            fake = Incoming(self.w.control, 0, k, key.encode(), value, ())
            return self.dead_letter(fake, f"customer stage failed for {key}: {exc!r}")
        if not produced:
            return []
        return self.route(produced, MessageId(f"{self.w.control}#0/customer:{partition}", k, 0), partition)

    def process(self, store: Store, r: Incoming) -> list[Out]:
        key = r.key.decode() if r.key else ""
        kind = header(r.headers, H_KIND) if r.topic == self.w.customer else KIND_STRIPE
        try:
            if kind == KIND_STRIPE:
                raw: bytes | None = r.value
                event = parse_event(r.value)
                routed = route_stripe_event(event)
            else:
                raw = None
                routed = [Routed(CUSTOMER, key, events.decode(r.value))]
        except (StripeParseError, events.EventDecodeError) as exc:
            return self.dead_letter(r, f"undecodable record: {exc}")
        base = incoming_id(r)
        outs: list[Out] = []
        for i, routed_one in enumerate(routed):
            mid = MessageId(base.upstream, base.offset, base.index * 100 + i)
            if routed_one.dest == CUSTOMER and routed_one.key == key:
                try:
                    produced = self.apply(store, key, mid, routed_one.record, partition=r.partition)
                except Exception as exc:  # a core bug must not stop the partition
                    outs += self.dead_letter(r, f"customer stage failed: {exc!r}")
                    continue
                if produced:
                    outs += self.route(produced, own_id(r, i), r.partition, raw)
            else:
                # not this partition's key (an invoice payment, or a differently keyed event)
                outs += self.route([routed_one], own_id(r, i), r.partition, raw)
        return outs


class InvoiceStage(Stage):
    name = INVOICE

    def on_complete(self, store: Store, partition: int, k: int, value: bytes) -> list[Out]:
        return self.barriers_to(self.w.customer, k, value, partition)

    def process(self, store: Store, r: Incoming) -> list[Out]:
        key = r.key.decode() if r.key else ""
        try:
            record = events.decode(r.value)
        except events.EventDecodeError as exc:
            return self.dead_letter(r, f"undecodable record: {exc}")
        try:
            produced = self.apply(store, key, incoming_id(r), record, partition=r.partition)
        except Exception as exc:
            return self.dead_letter(r, f"invoice stage failed: {exc!r}")
        return self.route(produced or [], own_id(r, 0), r.partition)


class ReferrerStage(Stage):
    name = REFERRER

    def process(self, store: Store, r: Incoming) -> list[Out]:
        key = r.key.decode() if r.key else ""
        try:
            record = events.decode(r.value)
        except events.EventDecodeError as exc:
            return self.dead_letter(r, f"undecodable record: {exc}")
        try:
            produced = self.apply(store, key, incoming_id(r), record, partition=r.partition)
        except Exception as exc:
            return self.dead_letter(r, f"referrer stage failed for {key}: {exc!r}")
        return self.route(produced or [], own_id(r, 0), r.partition)

    def on_complete(self, store: Store, partition: int, k: int, value: bytes) -> list[Out]:
        """The control event takes effect here: a payout run for every referrer this
        partition owns (in ucc order); a decision, an assignment, a payout's outcome or an
        adjustment for its referrer if this partition owns it."""
        try:
            record = control.decode(value)
        except control.ControlDecodeError:
            return []  # the control agent dead-letters these and places no marker for them
        n = self.w.partitions
        if isinstance(record, control.RulesRevision):
            self.add_revision(store, partition, value)
            return []
        if isinstance(record, control.PayoutRun):
            uccs = sorted(u for u in store.state_keys() if murmur2_partition(u.encode(), n) == partition)
        elif isinstance(record, control.ReviewDecision | control.CampaignAssignment | control.PayoutOutcome
                        | control.LedgerAdjustment):
            uccs = [record.ucc] if murmur2_partition(record.ucc.encode(), n) == partition else []
        else:
            return []  # a referrer's payout account: for `payouts execute`, not the ledger
        mid = MessageId.of_record(self.w.control, 0, k)
        outs: list[Out] = []
        for j, ucc in enumerate(uccs):
            fake = Incoming(self.w.control, 0, k, ucc.encode(), value, ())
            try:
                # an assignment or an adjustment may come before the referrer's first signup;
                # a decision or an outcome for a referrer with nothing changes nothing
                produced = self.apply(store, ucc, mid, record, partition=partition,
                                      store_new=referrer.opens_referrer(record))
            except Exception as exc:
                outs += self.dead_letter(fake, f"referrer stage failed for {ucc}: {exc!r}")
                continue
            if produced:
                outs += self.route(produced, MessageId(f"{self.w.control}#0/{partition}", k, j), partition)
        return outs


def _is_revision(value: bytes) -> bool:
    try:
        return isinstance(control.decode(value), control.RulesRevision)
    except control.ControlDecodeError:
        return False


def control_markers(w: Wiring, offset: int, value: bytes) -> list[Out]:
    """Where the control record at `offset` takes effect: a marker at the end of every
    stripe-events partition (docs/design.md#one-order)."""
    return [Out(w.stripe_events, marker_key(offset), value, [], partition=p) for p in range(w.partitions)]


def control_placed(w: Wiring, offset: int, marker_offsets: list[int]) -> Out:
    """The note, once every marker is written, that the control record has its place."""
    placed = control.ControlPlaced(offset, {str(p): o for p, o in enumerate(marker_offsets)})
    return Out(w.control, placed_key(offset), control.encode(placed), [], partition=0)


def stages(wiring: Wiring, rules: Rules | RuleBook, counters: Counters) -> dict[str, Stage]:
    return {
        CUSTOMER: CustomerStage(wiring, rules, referral.step, counters),
        INVOICE: InvoiceStage(wiring, rules, invoice_link.step, counters),
        REFERRER: ReferrerStage(wiring, rules, referrer.step, counters),
    }
