"""The worker's stages without Faust or Kafka: lists as topic partitions, dicts as tables.

Each stage partition runs the worker's own per-record work (processors/stages.py) the way
the agents do: it takes a batch from one of its inputs, hands every record to its stage,
"sends" the outputs (appends them to their topic partitions, which is the broker's ack),
and only then writes the batch's table values. Offsets are committed separately, so a
crash replays everything after the last commit, and a crash may also cut a batch's table
writes short. A test drives it with a generated schedule and compares the outcome with the
single-process Engine's over the same log (tests/unit/test_interleavings.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors import alignment
from processors.alignment import Alignment
from processors.delivery import Envelope, dumps_envelope, loads_envelope, murmur2_partition
from processors.publisher import command_id
from processors.rules import invoice_link, referral, referrer
from processors.rules.engine import Engine, Routed
from processors.stages import (
    ALIGNMENT_KEY,
    Counters,
    Incoming,
    Out,
    Wiring,
    control_markers,
    control_placed,
    is_reserved,
    stages,
)
from projections.logsource import LogMerger, LogRecord
from schemas import commands, control
from schemas.events import CUSTOMER, INVOICE, REFERRER
from schemas.rules import Rules
from schemas.topics import CONTROL, STRIPE_EVENTS, marker_offset, placed_offset

WIRING_NAMES = dict(stripe_events="stripe", control="control", customer="w-customer", invoice="w-invoice",
                    referrer="w-referrer", outbox="w-outbox", dead_letters="dead")


@dataclass
class Record:
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


class DictStore:
    """A batch's view of one stage partition's table (the agents' `Batch`, over a dict)."""

    def __init__(self, table: dict[str, bytes], codec: Any) -> None:
        self.table = table
        self.codec = codec
        self.envelopes: dict[str, Envelope] = {}
        self.states: dict[str, Any] = {}
        self.dirty: list[str] = []
        self.alignments: dict[int, Alignment] = {}
        self.metas: dict[str, bytes] = {}

    def envelope(self, key: str) -> Envelope:
        env = self.envelopes.get(key)
        if env is None:
            env = self.envelopes[key] = loads_envelope(self.table.get(key))
        return env

    def state(self, key: str, env: Envelope) -> Any:
        if key not in self.states:
            self.states[key] = self.codec.loads(env.state) if env.state else None
        return self.states[key]

    def put(self, key: str, state: Any) -> None:
        self.states[key] = state
        if key not in self.dirty:
            self.dirty.append(key)

    def state_keys(self) -> list[str]:
        keys = set(self.table) | {k for k, v in self.states.items() if v is not None}
        return [k for k in keys if not is_reserved(k)]

    def alignment(self, partition: int) -> Alignment:
        a = self.alignments.get(partition)
        if a is None:
            raw = self.table.get(ALIGNMENT_KEY.format(partition=partition))
            a = self.alignments[partition] = alignment.loads(raw)
        return a

    def set_alignment(self, partition: int, a: Alignment) -> None:
        self.alignments[partition] = a
        key = ALIGNMENT_KEY.format(partition=partition)
        if key not in self.dirty:
            self.dirty.append(key)

    def meta(self, name: str, partition: int) -> bytes | None:
        key = f"\x00{name}:{partition}"
        return self.metas[key] if key in self.metas else self.table.get(key)

    def set_meta(self, name: str, partition: int, raw: bytes) -> None:
        key = f"\x00{name}:{partition}"
        self.metas[key] = raw
        if key not in self.dirty:
            self.dirty.append(key)

    def writes(self) -> list[tuple[str, bytes]]:
        """The table values to write, in the order the agent writes them."""
        out = []
        for key in self.dirty:
            if key in self.metas:
                out.append((key, self.metas[key]))
            elif is_reserved(key):
                out.append((key, alignment.dumps(self.alignments[int(key.rsplit(":", 1)[1])])))
            else:
                env = self.envelopes[key]
                env.state = self.codec.dumps(self.states[key])
                out.append((key, dumps_envelope(env)))
        return out


@dataclass
class Unit:
    """One stage partition (or the control agent): its inputs, positions and table."""

    stage: str
    partition: int
    inputs: list[tuple[str, int]]
    position: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    table: dict[str, bytes] = field(default_factory=dict)


class Sim:
    def __init__(self, partitions: int, rules: Rules) -> None:
        self.n = partitions
        self.w = Wiring(partitions=partitions, **WIRING_NAMES)
        self.counters = Counters()
        self.stages = stages(self.w, rules, self.counters)
        self.clock = 0
        w = self.w
        self.topics: dict[str, list[list[Record]]] = {
            t: [[] for _ in range(1 if t in (w.control, w.dead_letters) else partitions)]
            for t in (w.stripe_events, w.control, w.customer, w.invoice, w.referrer, w.outbox, w.dead_letters)
        }
        self.units: list[Unit] = []
        for p in range(partitions):
            self.units.append(Unit(CUSTOMER, p, [(w.stripe_events, p), (w.customer, p)]))
            self.units.append(Unit(INVOICE, p, [(w.invoice, p)]))
            self.units.append(Unit(REFERRER, p, [(w.referrer, p)]))
        self.units.append(Unit("control", 0, [(w.control, 0)]))
        self.codecs = {CUSTOMER: referral, INVOICE: invoice_link, REFERRER: referrer}

    # --- the broker -------------------------------------------------------------------------

    def append(self, topic: str, key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...] = (),
               partition: int | None = None) -> int:
        parts = self.topics[topic]
        if partition is None:
            partition = 0 if len(parts) == 1 else murmur2_partition(key or b"", len(parts))
        self.clock += 1
        parts[partition].append(Record(key, value, headers, self.clock))
        return len(parts[partition]) - 1

    def send(self, outs: list[Out]) -> list[int]:
        return [self.append(o.topic, o.key, o.value, tuple(o.headers), o.partition) for o in outs]

    def ingest(self, body: bytes) -> None:
        obj = orjson.loads(body)["data"]["object"]
        key = obj["id"] if obj.get("object") == "customer" else (obj.get("customer") or obj["id"])
        self.append(self.w.stripe_events, key.encode(), body)

    def request(self, record: control.ControlRecord) -> None:
        self.append(self.w.control, b"cli", control.encode(record))

    # --- the workers ------------------------------------------------------------------------

    def backlog(self, unit: Unit, source: tuple[str, int]) -> int:
        return len(self.topics[source[0]][source[1]]) - unit.position.get(source, 0)

    def step(self, unit: Unit, source: tuple[str, int], count: int, *, commit: bool = True,
             written: int | None = None) -> bool:
        """One batch of up to `count` records from `source`; `written`: a crash after that
        many table writes (the records are then read again). False when there was nothing."""
        start = unit.position.get(source, 0)
        records = self.topics[source[0]][source[1]][start:start + count]
        if not records:
            return False
        if unit.stage == "control":
            for i, r in enumerate(records):
                if placed_offset(r.key) is not None:
                    continue
                metas = self.send(control_markers(self.w, start + i, r.value))
                self.send([control_placed(self.w, start + i, metas)])
        else:
            stage = self.stages[unit.stage]
            store = DictStore(unit.table, self.codecs[unit.stage])
            outs: list[Out] = []
            for i, r in enumerate(records):
                rec = Incoming(source[0], source[1], start + i, r.key, r.value, r.headers)
                outs += stage.handle(store, rec)
            self.send(outs)  # sent and acknowledged before the table is written
            writes = store.writes()
            for key, raw in writes[:written]:
                unit.table[key] = raw
            if written is not None and written < len(writes):
                self.crash(unit)
                return True
        unit.position[source] = start + len(records)
        if commit:
            unit.committed[source] = unit.position[source]
        return True

    def crash(self, unit: Unit) -> None:
        unit.position = dict(unit.committed)

    def drain(self, batch: int = 7) -> None:
        progress = True
        while progress:
            progress = False
            for unit in self.units:
                for source in unit.inputs:
                    while self.step(unit, source, batch):
                        progress = True

    # --- what came out --------------------------------------------------------------------

    def published(self) -> dict[str, bytes]:
        """The commands as the publisher passes them on: each id once. A duplicate must be the
        very same record."""
        out: dict[str, bytes] = {}
        for part in self.topics[self.w.outbox]:
            for r in part:
                cid = command_id(r.value)  # the publisher's own: a case state's id, not its case's
                assert out.setdefault(cid, r.value) == r.value, f"two different records with id {cid}"
        return out

    def referrer_states(self) -> dict[str, referrer.ReferrerState]:
        states = {}
        for unit in self.units:
            if unit.stage != REFERRER:
                continue
            for key, raw in unit.table.items():
                env = loads_envelope(raw) if not is_reserved(key) else None
                if env is not None and env.state:
                    states[key] = referrer.loads(env.state)
        return states

    def log(self) -> Iterator[LogRecord]:
        """The stripe-events and control topics in replay order."""
        w = self.w
        control_records = [LogRecord(CONTROL, 0, o, r.timestamp, r.key, r.headers, r.value)
                           for o, r in enumerate(self.topics[w.control][0])]
        merger = LogMerger([(STRIPE_EVENTS, p) for p in range(self.n)], control_records)
        for p, part in enumerate(self.topics[w.stripe_events]):
            merger.add((STRIPE_EVENTS, p), [
                LogRecord(STRIPE_EVENTS, p, o, r.timestamp, r.key, r.headers, r.value)
                for o, r in enumerate(part)
            ])
            merger.finish((STRIPE_EVENTS, p))
        yield from merger.drain()
        assert merger.done


def replay(sim: Sim, rules: Rules) -> tuple[Engine, dict[str, bytes]]:
    """What `refstream replay` folds from the simulated log, and the commands it makes."""
    engine = Engine(rules)
    out: list[Routed] = []
    for rec in sim.log():
        if marker_offset(rec.key) is not None or placed_offset(rec.key) is not None:
            continue
        out += engine.feed_stripe(rec.value) if rec.kind == STRIPE_EVENTS else engine.feed_control(rec.value)
    made: dict[str, bytes] = {}
    for r in out:
        raw = commands.encode(r.record)
        made[command_id(raw)] = raw
    return engine, made
